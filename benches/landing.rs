//! Benchmark: land 1M GTM-contact-like JSON records (~20 fields, with a
//! nested company object and a tag list) into Parquet on a local lake.
//!
//! Run: `cargo bench --profile dev -- landing` (the README's profile, so
//! no second build of DataFusion). Set FERRY_BENCH_ROWS to change the size.
//! Prints rows/s, MB/s of JSON input, Parquet bytes and peak memory (VmHWM).
//! Records are generated on the fly; the generate+parse cost alone is
//! measured first and reported, so the landing figure can be read net of it.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::common::peak_rss_mib;
use ferry::lake::{Lake, Lander, RunId, StreamRef};
use ferry::project::StreamOptions;
use serde_json::Value;

const COUNTRIES: [&str; 8] = [
    "US",
    "USA",
    "United States",
    "France",
    "DE",
    "Germany",
    "U.K.",
    "Japan",
];
const TITLES: [&str; 6] = [
    "VP of Marketing",
    "VP Marketing",
    "Vice President, Marketing",
    "Head of Sales",
    "SDR",
    "CTO",
];

fn record(i: u64) -> String {
    let company = i % 50_000;
    format!(
        concat!(
            "{{\"id\":{i},\"email\":\"contact{i}@company{c}.com\",\"first_name\":\"First{i}\",",
            "\"last_name\":\"Last{i}\",\"title\":\"{t}\",\"country\":\"{co}\",\"city\":\"City {m}\",",
            "\"phone\":\"+1 555 {p:04}\",\"lifecycle_stage\":\"{ls}\",\"lead_status\":\"open\",",
            "\"lead_score\":{s},\"num_employees\":{e},\"annual_revenue\":{r}.5,\"is_customer\":{b},",
            "\"owner_id\":{o},\"source\":\"webinar\",\"created_at\":\"2026-01-{d:02}T10:00:00Z\",",
            "\"updated_at\":\"2026-11-{d:02}T12:30:00Z\",",
            "\"company\":{{\"name\":\"Company {c}\",\"domain\":\"company{c}.com\",\"industry\":\"Software\"}},",
            "\"tags\":[\"t{m}\",\"event\"]}}"
        ),
        i = i,
        c = company,
        t = TITLES[(i % 6) as usize],
        co = COUNTRIES[(i % 8) as usize],
        m = i % 97,
        p = i % 10_000,
        ls = if i.is_multiple_of(3) { "lead" } else { "mql" },
        s = i % 100,
        e = (i % 5000) + 1,
        r = i * 13 % 1_000_000,
        b = i.is_multiple_of(10),
        o = i % 40,
        d = (i % 28) + 1,
    )
}

#[tokio::main]
pub async fn main() {
    let rows: u64 = std::env::var("FERRY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let input_bytes: usize = (0..rows).map(|i| record(i).len() + 1).sum();

    let t = Instant::now();
    let mut fields = 0usize;
    for i in 0..rows {
        let v: Value = serde_json::from_str(&record(i)).expect("bench JSON");
        fields += v.as_object().map(|o| o.len()).unwrap_or(0);
    }
    let parse_s = t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("temp dir");
    let lake = Lake::from_url("lake", dir.path(), &BTreeMap::new()).expect("lake");
    let stream = StreamRef::parse("crm.contacts").expect("stream");
    let lander = Lander::new(lake, RunId::new());
    let t = Instant::now();
    let report = lander
        .land_json(
            &stream,
            StreamOptions::default(),
            (0..rows).map(|i| Ok(serde_json::from_str::<Value>(&record(i)).expect("bench JSON"))),
        )
        .await
        .expect("landing");
    let land_s = t.elapsed().as_secs_f64();
    assert_eq!(report.rows, rows);

    println!(
        "landing {rows} JSON records ({} top-level fields each)",
        fields as u64 / rows.max(1)
    );
    println!(
        "  input JSON           {:>10.1} MiB",
        input_bytes as f64 / 1048576.0
    );
    println!("  generate+parse only  {:>10.2} s", parse_s);
    println!("  land (incl. parse)   {:>10.2} s", land_s);
    println!(
        "  throughput           {:>10.0} rows/s",
        rows as f64 / land_s
    );
    println!(
        "  throughput           {:>10.1} MiB/s of JSON",
        input_bytes as f64 / 1048576.0 / land_s
    );
    println!(
        "  parquet written      {:>10.1} MiB in {} file(s)",
        report.bytes as f64 / 1048576.0,
        report.files.iter().filter(|f| f.status == "landed").count()
    );
    println!("  peak memory (VmHWM)  {:>10.0} MiB", peak_rss_mib());
}
