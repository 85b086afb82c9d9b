//! Benchmark: extraction.
//!
//! 1. Landing N records (default 1,000,000; FERRY_BENCH_ROWS) from a local
//!    paginated JSON API (the REST emulator, 100 records per page, cursor
//!    pagination) into Parquet through the declarative REST source.
//! 2. Webhook events accepted per second by `ferry serve` (Stripe-signed,
//!    concurrency 50; FERRY_BENCH_EVENTS, default 5,000), each persisted in the
//!    lake before the 200.
//! 3. A CSV file drop of N rows (default 1,000,000; FERRY_BENCH_DROP_ROWS,
//!    about 90 bytes a row), landed by the files source: seconds, rows/s and
//!    peak memory, which stays far below the file's size because drops are
//!    read and landed in pieces.
//!
//! 4. A Salesforce object of N leads (default 200,000;
//!    FERRY_BENCH_SF_EXTRACT_ROWS, 0 skips it) read from the Salesforce
//!    emulator twice: through the REST query API (pages of 2,000) and
//!    through one Bulk API 2.0 query job (CSV pages of 50,000): seconds,
//!    rows/s, API calls, and peak memory (ferry and the emulator share this
//!    process).
//!
//! Run: `cargo bench --profile dev --bench extract`.

use std::time::{Duration, Instant};

mod common;
use common::peak_rss_mib;
use ferry::lake::Lake;
use ferry::project::Project;
use ferry::sim::rest::{self, RestConfig};
use futures::StreamExt;

async fn rest_landing(rows: usize) {
    let api = rest::start(
        RestConfig {
            records: rows,
            max_page: 100,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("ferry.toml"),
        format!(
            r#"[project]
name = "bench"

[sources.api]
type = "rest"
url = "{}"

[sources.api.streams.items]
path = "/cursor/items"
records = "data"
primary_key = "id"
pagination = {{ type = "cursor", cursor_path = "meta.next_cursor", param = "cursor", limit_param = "limit", limit = 100 }}
"#,
            api.base_url()
        ),
    )
    .unwrap();
    let project = Project::load(tmp.path()).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let start = Instant::now();
    let out = ferry::extract::extract(&project, &lake, &[], |_| {})
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let s = &out[0];
    println!(
        "extract: {} records in {} pages of 100 from a local JSON API: {secs:.1} s, {:.0} rows/s, {:.1} MiB/s of JSON, peak RSS {:.0} MiB",
        s.rows,
        s.pages,
        s.rows as f64 / secs,
        s.bytes as f64 / secs / 1048576.0,
        peak_rss_mib()
    );
}

async fn webhooks(events: usize) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("ferry.toml"),
        "[project]\nname = \"bench\"\n\n[sources.billing]\ntype = \"webhook\"\npreset = \"stripe\"\nsecret = \"whsec_bench\"\n",
    )
    .unwrap();
    let project = Project::load(tmp.path()).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let server = ferry::serve::start(
        &project,
        lake,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let url = format!("{}/webhooks/billing", server.url());
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let start = Instant::now();
    let ok = futures::stream::iter((0..events).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = format!(r#"{{"id": "evt_{i}", "type": "invoice.paid", "created": {now}, "data": {{"object": {{"customer": "cus_{i}"}}}}}}"#);
            let sig = hex::encode(ferry::extract::webhook::sign("whsec_bench", format!("{now}.{body}").as_bytes()));
            client
                .post(&url)
                .header("stripe-signature", format!("t={now},v1={sig}"))
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false)
        }
    }))
    .buffer_unordered(50)
    .filter(|ok| futures::future::ready(*ok))
    .count()
    .await;
    let secs = start.elapsed().as_secs_f64();
    let land_start = Instant::now();
    server.shutdown().await;
    println!(
        "webhooks: {ok}/{events} events accepted at concurrency 50 in {secs:.2} s: {:.0} events/s (each durable before its 200); final landing {:.2} s; peak RSS {:.0} MiB",
        ok as f64 / secs,
        land_start.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}

async fn file_drop(rows: usize) {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let drops = tmp.path().join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    let file = drops.join("attendees.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        writeln!(w, "Email,Company Name,Title,Country,Registered At").unwrap();
        for i in 0..rows {
            writeln!(
                w,
                "person{i}@company{}.example,Company {} Inc,VP Marketing,United States,2026-11-{:02}T10:00:00Z",
                i % 5000,
                i % 5000,
                1 + i % 28
            )
            .unwrap();
        }
    }
    let size = std::fs::metadata(&file).unwrap().len();
    let rss_before = peak_rss_mib();
    std::fs::write(
        tmp.path().join("ferry.toml"),
        "[project]\nname = \"bench\"\n\n[sources.events]\ntype = \"files\"\npath = \"drops\"\n\n\
         [sources.events.streams.attendees]\npattern = \"attendees*.csv\"\n\
         columns = [\"Email\", \"Company Name\", \"Title\", \"Country\", \"Registered At\"]\n",
    )
    .unwrap();
    let project = Project::load(tmp.path()).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let start = Instant::now();
    let out = ferry::extract::extract(&project, &lake, &[], |_| {})
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "file drop: {} CSV rows ({:.0} MiB) landed in {secs:.1} s, {:.0} rows/s, {:.1} MiB/s; peak RSS {:.0} MiB (before: {rss_before:.0} MiB)",
        out[0].rows,
        size as f64 / 1048576.0,
        out[0].rows as f64 / secs,
        size as f64 / secs / 1048576.0,
        peak_rss_mib()
    );
}

async fn salesforce_extract(rows: usize) {
    use ferry::sim::salesforce as sf;
    let sim = sf::start(
        sf::SimConfig {
            daily: 10_000_000,
            ..sf::SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    sim.with_org(|org| {
        for i in 0..rows {
            let mut m = serde_json::Map::new();
            m.insert("LastName".into(), format!("Lead{i}").into());
            m.insert("FirstName".into(), "Ada".into());
            m.insert("Company".into(), format!("Company {}", i % 5_000).into());
            m.insert("Email".into(), format!("lead{i}@example.com").into());
            m.insert("Title".into(), "VP Marketing".into());
            m.insert("Status".into(), "Open - Not Contacted".into());
            m.insert("Ferry_Lead_Score__c".into(), ((i % 100) as f64).into());
            org.insert("Lead", &[m]).unwrap();
        }
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("\nSalesforce extract: {rows} leads");
    println!("| path | seconds | rows/s | API calls | peak RSS (MiB, with the emulator) |");
    println!("|---|---|---|---|---|");
    for (path, threshold) in [
        ("REST query API", i64::MAX as u64),
        ("Bulk API 2.0 query job", 0),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("ferry.toml"),
            format!(
                r#"[project]
name = "bench"

[sources.sf]
type = "salesforce"
url = "{}"
bulk_threshold = {threshold}
search_lag_margin_seconds = 0
oauth = {{ client_id = "ferry-sim-client", client_secret = "ferry-sim-secret", refresh_token = "ferry-sim-refresh" }}

[sources.sf.streams.leads]
object = "Lead"
fields = ["Email", "FirstName", "LastName", "Title", "Company", "Status", "Ferry_Lead_Score__c"]
"#,
                sim.base_url()
            ),
        )
        .unwrap();
        let project = Project::load(tmp.path()).unwrap();
        let lake = Lake::open(&project.lake, &project.dir).unwrap();
        let calls = sim.stats().0;
        let start = Instant::now();
        let out = ferry::extract::extract(&project, &lake, &[], |_| {})
            .await
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let landed: u64 = out.iter().map(|r| r.rows).sum();
        assert_eq!(landed as usize, rows, "{path}: every lead landed");
        println!(
            "| {path} | {secs:.2} | {:.0} | {} | {:.0} |",
            rows as f64 / secs,
            sim.stats().0 - calls,
            peak_rss_mib()
        );
    }
}

#[tokio::main]
async fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    // The file drop first: its peak memory is then not the API's.
    file_drop(env("FERRY_BENCH_DROP_ROWS", 1_000_000)).await;
    rest_landing(env("FERRY_BENCH_ROWS", 1_000_000)).await;
    webhooks(env("FERRY_BENCH_EVENTS", 5_000)).await;
    let sf_rows = env("FERRY_BENCH_SF_EXTRACT_ROWS", 200_000);
    if sf_rows > 0 {
        salesforce_extract(sf_rows).await;
    }
}
