//! Benchmark: `ferry build` on the GTM starter project (the repository's
//! `ferry.toml`, `models/` and `sql/`) over generated data served by the
//! embedded emulators: extract over HTTP → seed → run → test → sync.
//!
//! Default: 1,000,000 contacts (about 10M touches, 500k form-fill leads,
//! 200k companies). `FERRY_BENCH_CONTACTS=N` resizes it.
//!
//! The HubSpot emulator's rate limit is raised (`FERRY_BENCH_PER_10S`,
//! default 20,000 per 10 s) so the figures are ferry's own; the API calls
//! each stage made are printed so the time at a real account's limit
//! (190 per 10 s on Professional) can be worked out.
//!
//! Run: `cargo bench --profile dev -- build`. FERRY_BENCH_MEMORY_LIMIT=3GiB
//! sets the engine's memory pool as `[engine] memory_limit` would. `FERRY_BENCH_LAKE=DIR`
//! keeps the lake (an empty folder, or one an earlier bench or demo wrote).
//! Prints wall time and peak memory (sampled RSS) per stage, overall peak
//! (VmHWM) and API calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{peak_rss_mib, status_mib};
use ferry::demo::{self, DemoOptions, generate::Dataset};
use ferry::lake::Lake;
use ferry::project::Project;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

pub fn main() {
    let contacts = env_usize("FERRY_BENCH_CONTACTS", 1_000_000);
    let per_10s = env_usize("FERRY_BENCH_PER_10S", 20_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // FERRY_BENCH_LAKE=DIR keeps the lake for `ferry query` afterwards.
    let tmp = tempfile::tempdir().expect("temp dir");
    let lake_dir = std::env::var("FERRY_BENCH_LAKE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().join("lake"));
    let lake = Lake::from_url(
        lake_dir.to_str().expect("utf-8 path"),
        tmp.path(),
        &Default::default(),
    )
    .expect("lake");
    let project = Project::load(root).expect("the starter project loads");
    // FERRY_BENCH_MEMORY_LIMIT=3GiB: the engine's pool, as `[engine]
    // memory_limit` sets it (default: half the machine).
    if let Ok(limit) = std::env::var("FERRY_BENCH_MEMORY_LIMIT") {
        ferry::engine::memory::configure(ferry::engine::memory::EngineSettings {
            memory_limit: ferry::engine::memory::parse_size(&limit).expect("a size such as 3GiB"),
            ..Default::default()
        })
        .expect("engine settings");
    }

    // RSS sampled every 20 ms: (seconds since start, MiB).
    let start = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = samples.lock() {
                    s.push((start.elapsed().as_secs_f64(), status_mib("VmRSS")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let t = Instant::now();
    let data = Arc::new(Dataset::generate(contacts, demo::DEFAULT_SEED));
    let generated = t.elapsed().as_secs_f64();
    let touches = data.touches.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let demo = rt
        .block_on(async {
            demo::run_on(
                project,
                lake,
                data,
                generated,
                &DemoOptions {
                    scale: contacts,
                    hubspot_per_10s: per_10s,
                    hubspot_daily: u64::MAX / 2,
                    ..DemoOptions::default()
                },
            )
            .await
        })
        .expect("the demo build succeeds");
    let total = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let peak_between = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, m)| *m)
            .fold(0.0f64, f64::max)
    };

    println!(
        "\nferry build on the starter project: {contacts} contacts, {touches} touches, {} leads, {} companies, {} deals, {} email events",
        demo.data.leads.len(),
        demo.data.companies.len(),
        demo.data.deals.len(),
        demo.data.email_events.len()
    );
    println!(
        "{:<22} {:>9} {:>12}  detail",
        "stage", "seconds", "peak MiB"
    );
    println!(
        "{:<22} {:>9.1} {:>12.0}",
        "generate",
        generated,
        peak_between(0.0, generated)
    );
    // The stages ran one after another; the build's own setup (emulator
    // load) sits between generation and the first stage.
    let stages_total: f64 = demo.report.stages.iter().map(|s| s.seconds).sum();
    let mut at = total - stages_total - demo.report_seconds;
    println!(
        "{:<22} {:>9.1} {:>12.0}",
        "load emulators",
        at - generated,
        peak_between(generated, at)
    );
    for s in &demo.report.stages {
        println!(
            "{:<22} {:>9.1} {:>12.0}  {}",
            s.name,
            s.seconds,
            peak_between(at, at + s.seconds),
            s.detail
        );
        at += s.seconds;
    }
    println!(
        "{:<22} {:>9.1} {:>12.0}",
        "report",
        demo.report_seconds,
        peak_between(at, total)
    );
    let (calls, limited) = demo.served.hubspot.stats();
    println!(
        "total {total:.1} s; peak RSS {:.0} MiB (VmHWM; the emulators' copy of the CRM is in this process too); \
         HubSpot API calls {calls} ({limited} answered 429) = {:.1} min at 190 per 10 s",
        peak_rss_mib(),
        calls as f64 / 19.0 / 60.0
    );
    demo.served.hubspot.stop();
    demo.served.marketing.stop();
}
