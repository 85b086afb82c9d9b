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
//! 5. **Static pages, side by side** (`pages`): 300,000 HubSpot-shaped
//!    contacts (FERRY_BENCH_PAGE_ROWS) in 3,000 pages of 100 (about 188 MB of
//!    JSON), served from memory by a child process on loopback and followed
//!    by their `paging.next.link`. Read three ways: one sequential fetch of
//!    every page (curl, the wire's limit), `ferry extract` (the release or
//!    dev binary this bench was built with) and, when FERRY_BENCH_DLT points
//!    at a Python with dlt (`python3 -m venv /tmp/dlt && /tmp/dlt/bin/pip
//!    install "dlt[parquet]"`, then FERRY_BENCH_DLT=/tmp/dlt/bin/python),
//!    dlt's `rest_api` source to Parquet files: wall time, peak memory
//!    (`/usr/bin/time`), and the ratios.
//!
//! Run: `cargo bench --profile dev -- extract` (all), or name the
//! parts: `cargo bench --profile dev -- extract pages`.

use std::time::{Duration, Instant};

use crate::common::peak_rss_mib;
use axum::response::IntoResponse;
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

/// One HubSpot-shaped contact (about 620 bytes of JSON).
fn contact(i: usize) -> String {
    let day = 1 + i % 28;
    format!(
        r#"{{"id":"{id}","properties":{{"createdate":"2024-03-{day:02}T10:{m:02}:00.000Z","email":"person{i}@company{c}.example.com","firstname":"Firstname{i}","lastname":"Lastname{i}","company":"Company {c} Incorporated","jobtitle":"Director of Revenue Operations","phone":"+1 415 555 {p:04}","city":"San Francisco","country":"United States","website":"https://company{c}.example.com","lifecyclestage":"marketingqualifiedlead","hs_lead_status":"IN_PROGRESS","hubspot_owner_id":"{o}","num_employees":"{e}","hs_object_id":"{id}","lastmodifieddate":"2024-06-{day:02}T08:{m:02}:30.000Z"}},"createdAt":"2024-03-{day:02}T10:{m:02}:00.000Z","updatedAt":"2024-06-{day:02}T08:{m:02}:30.000Z","archived":false}}"#,
        id = 1000 + i,
        m = i % 60,
        c = i % 5000,
        p = i % 10000,
        o = 100 + i % 40,
        e = 10 + i % 990,
    )
}

/// The child process of the `pages` part: builds every page in memory,
/// prints its base URL and serves `/crm/v3/objects/contacts?after=N`.
async fn serve_pages(rows: usize) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let per = 100;
    let pages: Vec<bytes::Bytes> = (0..rows.div_ceil(per))
        .map(|n| {
            let start = n * per;
            let end = (start + per).min(rows);
            let results: Vec<String> = (start..end).map(contact).collect();
            let paging = if end < rows {
                format!(
                    r#","paging":{{"next":{{"after":"{end}","link":"{base}/crm/v3/objects/contacts?after={end}"}}}}"#
                )
            } else {
                String::new()
            };
            bytes::Bytes::from(format!(r#"{{"results":[{}]{paging}}}"#, results.join(",")))
        })
        .collect();
    let total: usize = pages.iter().map(|p| p.len()).sum();
    let pages = std::sync::Arc::new(pages);
    let app = axum::Router::new().route(
        "/crm/v3/objects/contacts",
        axum::routing::get(
            move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                let pages = pages.clone();
                async move {
                    let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                    match pages.get(after / per) {
                        Some(p) => (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            p.clone(),
                        )
                            .into_response(),
                        None => axum::http::StatusCode::NOT_FOUND.into_response(),
                    }
                }
            },
        ),
    );
    println!("{base} {} {total}", rows.div_ceil(per));
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    axum::serve(listener, app).await.unwrap();
}

/// Run `cmd` under /usr/bin/time in `dir`: (wall seconds, peak RSS MiB, ok).
fn timed(dir: &std::path::Path, cmd: &mut std::process::Command) -> (f64, f64, bool) {
    let report = dir.join("time.txt");
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("/usr/bin/time");
    if !out.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let mut parts = text.split_whitespace();
    let mut num = || {
        parts
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let secs = num();
    let mib = num() / 1024.0;
    (secs, mib, out.status.success())
}

const DLT_SCRIPT: &str = r#"
import sys, dlt
from dlt.sources.rest_api import rest_api_source
base, out = sys.argv[1], sys.argv[2]
source = rest_api_source({
    "client": {"base_url": base, "paginator": {"type": "json_link", "next_url_path": "paging.next.link"}},
    "resources": [{"name": "contacts", "endpoint": {"path": "crm/v3/objects/contacts", "data_selector": "results"}}],
})
pipeline = dlt.pipeline(pipeline_name="bench", pipelines_dir=out + "/pipelines",
    destination=dlt.destinations.filesystem(bucket_url=out + "/lake"), dataset_name="raw")
info = pipeline.run(source, loader_file_format="parquet")
print(pipeline.last_trace.last_normalize_info)
"#;

async fn static_pages(rows: usize) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["extract", "serve-pages"])
        .env("FERRY_BENCH_PAGE_ROWS", rows.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut parts = line.split_whitespace();
    let base = parts.next().unwrap().to_string();
    let pages: usize = parts.next().unwrap().parse().unwrap();
    let bytes: f64 = parts.next().unwrap().parse().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    println!(
        "\nstatic pages: {rows} contacts in {pages} pages of 100, {:.0} MB of JSON, next links, loopback\n",
        bytes / 1e6
    );
    println!("| reader | seconds | peak MiB | vs ferry |");
    println!("|---|---|---|---|");
    let mut lines = Vec::new();
    // The wire's limit: every page fetched in order on one connection.
    let config: String = (0..pages)
        .map(|n| {
            format!(
                "url = \"{base}/crm/v3/objects/contacts?after={}\"\noutput = /dev/null\n",
                n * 100
            )
        })
        .collect();
    std::fs::write(dir.join("curl.cfg"), config).unwrap();
    let curl = timed(
        dir,
        std::process::Command::new("curl")
            .args(["-s", "--fail", "--config"])
            .arg(dir.join("curl.cfg")),
    );
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "bench"

[sources.hubspot]
type = "rest"
url = "{base}"

[sources.hubspot.streams.contacts]
path = "/crm/v3/objects/contacts"
records = "results"
primary_key = "id"
pagination = {{ type = "next_url", path = "paging.next.link" }}
"#
        ),
    )
    .unwrap();
    let ferry = timed(
        dir,
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry")).arg("extract"),
    );
    assert!(ferry.2, "ferry extract failed");
    let landed = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "query",
            "select count(*) as n, count(distinct id) as ids from hubspot.contacts",
            "--format",
            "csv",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let landed = String::from_utf8_lossy(&landed.stdout).to_string();
    assert!(
        landed.contains(&format!("{rows},{rows}")),
        "ferry landed {landed}"
    );
    lines.push(("curl, one sequential fetch", curl));
    lines.push(("ferry extract", ferry));
    if let Some(python) = std::env::var_os("FERRY_BENCH_DLT") {
        std::fs::write(dir.join("dlt_bench.py"), DLT_SCRIPT).unwrap();
        let out = dir.join("dlt");
        let dlt = timed(
            dir,
            std::process::Command::new(python)
                .arg(dir.join("dlt_bench.py"))
                .arg(&base)
                .arg(&out),
        );
        lines.push(("dlt rest_api → Parquet", dlt));
    }
    for (name, (secs, mib, ok)) in &lines {
        println!(
            "| {name}{} | {secs:.2} | {mib:.0} | {:.2}× |",
            if *ok { "" } else { " (failed)" },
            secs / ferry.0
        );
    }
    println!(
        "\nferry: {:.0} rows/s, {:.0} MB/s of JSON; {:.2}× the sequential fetch\n",
        rows as f64 / ferry.0,
        bytes / 1e6 / ferry.0,
        ferry.0 / curl.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main]
pub async fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let page_rows = env("FERRY_BENCH_PAGE_ROWS", 300_000);
    let args = crate::common::parts();
    if args.first().map(String::as_str) == Some("serve-pages") {
        serve_pages(page_rows).await;
        return;
    }
    // Words after `extract` name the parts to run.
    let parts: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = |part: &str| parts.is_empty() || parts.contains(&part);
    if run("pages") {
        static_pages(page_rows).await;
    }
    // The file drop next: its peak memory is then not the API's.
    if run("drop") {
        file_drop(env("FERRY_BENCH_DROP_ROWS", 1_000_000)).await;
    }
    if run("rest") {
        rest_landing(env("FERRY_BENCH_ROWS", 1_000_000)).await;
    }
    if run("webhooks") {
        webhooks(env("FERRY_BENCH_EVENTS", 5_000)).await;
    }
    let sf_rows = env("FERRY_BENCH_SF_EXTRACT_ROWS", 200_000);
    if sf_rows > 0 && run("salesforce") {
        salesforce_extract(sf_rows).await;
    }
}
