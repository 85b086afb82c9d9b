//! Benchmark: the GTM starter project's models built in one process and on
//! a Ballista cluster on this machine (ferry's scheduler and two executors,
//! separate processes on loopback, two task slots each).
//!
//! Setup (not timed): a copy of the starter project and `ferry demo --scale
//! N` (FERRY_BENCH_CLUSTER_CONTACTS, default 100,000 contacts), which lands
//! the data and builds every model once. `FERRY_BENCH_CLUSTER_LAKE=DIR`
//! uses a lake set up already instead (the build bench's
//! `FERRY_BENCH_LAKE=DIR` leaves one: at 1M contacts that takes 5 minutes,
//! `ferry demo` 30, at HubSpot's limits). `as_of` is pinned so both runs
//! score at the same moment. Then `ferry run` twice: in one process, and
//! with `--engine df://...`; after each, every model's rows are read back
//! (sorted, floats to 9 significant digits) and the two runs must be
//! equal. Prints wall time, the peak memory of the ferry process and of
//! each executor (VmHWM), and the bytes the executors wrote as shuffle
//! files (the Arrow IPC files each stage hands the next; the final stage's
//! are what ferry streams back).
//!
//! Run: `cargo bench --profile dev -- cluster`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// Peak resident memory so far, MiB (VmHWM).
    fn peak_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<f64>().ok())
            })
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn ferry(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.arg("--project-dir")
        .arg(dir)
        .env_remove("FERRY_LAKE")
        .env_remove("FERRY_ENGINE")
        .env_remove("HUBSPOT_TOKEN");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cmd` under /usr/bin/time: (seconds, peak MiB).
fn timed(dir: &Path, cmd: &mut Command) -> (f64, f64) {
    let report = dir.join("time.txt");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M", "-o"])
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()
        .expect("/usr/bin/time");
    if !out.status.success() {
        // The failed models and their errors are on stdout; keep the
        // project to look into (it took long to set up).
        let stdout = String::from_utf8_lossy(&out.stdout);
        let failed: Vec<&str> = stdout
            .lines()
            .skip_while(|l| !l.starts_with("ERROR"))
            .take(40)
            .collect();
        panic!(
            "{} failed; the project is kept at {}\n{}\n{}",
            cmd.get_args()
                .map(|a| a.to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            dir.display(),
            failed.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let mut parts = text
        .split_whitespace()
        .map(|s| s.parse::<f64>().unwrap_or(f64::NAN));
    let secs = parts.next().unwrap_or(f64::NAN);
    let mib = parts.next().unwrap_or(f64::NAN) / 1024.0;
    (secs, mib)
}

#[path = "../tests/it/model_rows.rs"]
mod model_rows;

/// Each persisted model's (name, rows, digest of its sorted rows), read
/// back as the cluster test reads them ([`model_rows`]).
fn model_digests(dir: &Path) -> Vec<(String, usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut all = Vec::new();
    model_rows::each_model(
        dir,
        || ferry(dir),
        |name, rows| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            rows.hash(&mut h);
            all.push((name, rows.len(), h.finish()));
        },
    );
    all
}

fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += bytes_under(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

pub fn main() {
    let contacts: usize = std::env::var("FERRY_BENCH_CLUSTER_CONTACTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(100_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Kept: a failed run leaves it to look into.
    let tmp = tempfile::tempdir().expect("temp dir").keep();
    let dir: PathBuf = tmp.join("starter");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Stages as wide as the cluster's task slots (2 executors × 2); scores
    // decay up to `as_of` ("now" when unset), so both runs pin it.
    let toml = std::fs::read_to_string(root.join("ferry.toml")).expect("ferry.toml");
    assert!(toml.contains("as_of = \"\""), "ferry.toml's as_of moved");
    let toml = toml.replace("as_of = \"\"", "as_of = \"2026-11-01T00:00:00Z\"");
    std::fs::write(
        dir.join("ferry.toml"),
        format!("{toml}\n[engine]\ncluster_partitions = 4\n"),
    )
    .expect("write ferry.toml");
    for d in ["models", "sql"] {
        copy_dir(&root.join(d), &dir.join(d));
    }
    match std::env::var("FERRY_BENCH_CLUSTER_LAKE") {
        Ok(lake) => {
            std::os::unix::fs::symlink(&lake, dir.join("lake")).expect("link the lake");
            println!("\nstarter project on the lake at {lake} (set up already)\n");
        }
        Err(_) => {
            let t = Instant::now();
            let demo = ferry(&dir)
                .args(["demo", "--scale", &contacts.to_string(), "--threads", "2"])
                .output()
                .expect("ferry demo");
            assert!(
                demo.status.success(),
                "{}",
                String::from_utf8_lossy(&demo.stderr)
            );
            println!(
                "\nstarter project, {contacts} contacts: data landed and models built once by `ferry demo` in {:.1} s (setup)\n",
                t.elapsed().as_secs_f64()
            );
        }
    }

    let (local_s, local_mib) = timed(&dir, ferry(&dir).args(["run", "--threads", "2"]));
    let local = model_digests(&dir);

    let port = free_port();
    let scheduler = Process(
        ferry(&dir)
            .args([
                "engine",
                "scheduler",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scheduler"),
    );
    wait_for(port);
    let mut executors = Vec::new();
    for i in 0..2 {
        let p = free_port();
        let work = tmp.join(format!("executor-{i}"));
        let e = Process(
            ferry(&dir)
                .args([
                    "engine",
                    "executor",
                    "--scheduler",
                    &format!("127.0.0.1:{port}"),
                ])
                .args(["--bind", &format!("127.0.0.1:{p}"), "--vcores", "2"])
                .arg("--work-dir")
                .arg(&work)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("executor"),
        );
        wait_for(p);
        executors.push((e, work));
    }
    let (cluster_s, cluster_mib) = timed(
        &dir,
        ferry(&dir).args([
            "run",
            "--threads",
            "2",
            "--engine",
            &format!("df://127.0.0.1:{port}"),
        ]),
    );
    let shuffled: u64 = executors.iter().map(|(_, w)| bytes_under(w)).sum();
    let cluster = model_digests(&dir);
    let differ: Vec<String> = local
        .iter()
        .zip(&cluster)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("{}: {} rows locally, {} on the cluster", a.0, a.1, b.1))
        .collect();
    assert!(
        local.len() == cluster.len() && differ.is_empty(),
        "the cluster's models differ from the local run's (project kept at {}):\n{}",
        dir.display(),
        differ.join("\n")
    );
    let rows: usize = local.iter().map(|m| m.1).sum();
    println!(
        "\n{} models, {rows} rows: equal on the cluster and in one process",
        local.len()
    );
    println!("| models run | seconds | ferry peak MiB | executors' peak MiB |");
    println!("|---|---|---|---|");
    println!("| in one process | {local_s:.1} | {local_mib:.0} | — |");
    println!(
        "| on 2 executors (scheduler and executors on this machine) | {cluster_s:.1} | {cluster_mib:.0} | {} |",
        executors
            .iter()
            .map(|(e, _)| format!("{:.0}", e.peak_mib()))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    println!(
        "\nshuffle files written by the executors: {:.1} MiB; the cluster took {:.2}× the local time\n",
        shuffled as f64 / (1024.0 * 1024.0),
        cluster_s / local_s
    );
    drop(executors);
    drop(scheduler);
    // The project only: a lake set up beforehand stays where it was.
    let _ = std::fs::remove_dir_all(&tmp);
}
