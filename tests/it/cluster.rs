//! Model builds on a Ballista cluster: ferry's scheduler and two executors,
//! each a process of the real binary on loopback, run the GTM starter
//! project; every model's rows equal a local run's.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

/// A process killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use crate::free_port;

fn wait_for(port: u16, what: &str, p: &mut Process) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!("{what} exited: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} is not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scheduler for `dir`'s lake on a free port, listening.
fn start_scheduler(dir: &Path, what: &str) -> (u16, Process) {
    let port = free_port();
    let mut p = Process(
        ferry(dir)
            .args([
                "engine",
                "scheduler",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(port, what, &mut p);
    (port, p)
}

/// Every persisted model's rows ([`crate::model_rows`]).
fn models(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut all = Vec::new();
    crate::model_rows::each_model(dir, || ferry(dir), |name, rows| all.push((name, rows)));
    all
}

#[test]
fn the_starter_project_on_a_two_executor_cluster_equals_a_local_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("starter");
    std::fs::create_dir_all(&dir).unwrap();
    // Scores decay up to `as_of`, "now" when unset: both runs must score
    // at one moment, or a score near a rounding boundary differs between
    // them (this failed once in 17 runs before it was pinned).
    let toml = std::fs::read_to_string(root().join("ferry.toml")).unwrap();
    assert!(toml.contains("as_of = \"\""));
    let toml = toml.replace("as_of = \"\"", "as_of = \"2026-11-01T00:00:00Z\"");
    // Stages as wide as the cluster's four task slots, not this machine's
    // cores (ignored by the local runs).
    let toml = format!("{toml}\n[engine]\ncluster_partitions = 4\n");
    std::fs::write(dir.join("ferry.toml"), toml).unwrap();
    for d in ["models", "sql"] {
        crate::copy_dir(&root().join(d), &dir.join(d));
    }
    // Shapes the starter project lacks: views over views read with a
    // filter on a column they do not return, an incremental merge reading
    // itself, a model over an empty table.
    let extra = dir.join("models/cluster");
    std::fs::create_dir_all(&extra).unwrap();
    for (name, sql) in [
        (
            "cluster_view",
            "{{ config(materialized='view') }}\nselect person_id, lead_score, country_code from {{ ref('contact_scores') }} where lead_score > 5",
        ),
        (
            "cluster_view_of_view",
            "{{ config(materialized='view') }}\nselect person_id, lead_score from {{ ref('cluster_view') }} where country_code is not null",
        ),
        (
            "cluster_from_views",
            "select person_id from {{ ref('cluster_view_of_view') }} where lead_score < 90",
        ),
        (
            "cluster_incremental",
            "{{ config(materialized='incremental', unique_key='person_id') }}\n\
             select person_id, lead_score, fit_score from {{ ref('contact_scores') }}\n\
             {% if is_incremental() %} where person_id not in (select person_id from {{ this }} where lead_score > 1000) {% endif %}",
        ),
        (
            "cluster_empty",
            "select person_id from {{ ref('contact_scores') }} where 1 = 0",
        ),
        (
            "cluster_from_empty",
            "select count(*) as n from {{ ref('cluster_empty') }}",
        ),
    ] {
        std::fs::write(extra.join(format!("{name}.sql")), sql).unwrap();
    }
    // The lake: landed data, seeds and every model built in this process.
    let demo = ferry(&dir)
        .args(["demo", "--scale", "300", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    // The same lake twice: one copy is rebuilt in one process, the other
    // on the cluster.
    let copy = tmp.path().join("local");
    crate::copy_dir(&dir, &copy);
    let here = ferry(&copy)
        .args(["run", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        here.status.success(),
        "{}",
        String::from_utf8_lossy(&here.stderr)
    );
    let local = models(&copy);
    assert!(local.len() >= 10, "{local:?}");

    let (port, scheduler) = start_scheduler(&dir, "the scheduler");
    let mut executors = Vec::new();
    for i in 0..2 {
        let p = free_port();
        let work = tmp.path().join(format!("executor-{i}"));
        let mut e = Process(
            ferry(&dir)
                .args(["engine", "executor", "--scheduler"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--bind", &format!("127.0.0.1:{p}"), "--vcores", "2"])
                .arg("--work-dir")
                .arg(&work)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for(p, "an executor", &mut e);
        executors.push((e, work));
    }

    // A run that never ends (Ballista's adaptive planner replanned a stage
    // without end) fails here instead of hanging the suite.
    let log_path = tmp.path().join("run.log");
    let mut run = ferry(&dir)
        .args(["run", "-v", "--threads", "2"])
        .args(["--engine", &format!("df://127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = run.kill();
            let _ = run.wait();
            panic!(
                "the cluster run did not finish in 300 s:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{log}");
    let on_cluster = log
        .lines()
        .filter(|l| l.contains("runs on the cluster at"))
        .count();
    let here: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("runs in this process"))
        .collect();
    assert_eq!(
        on_cluster,
        local.len(),
        "every persisted model runs on the cluster; these did not: {here:?}\n{log}"
    );
    // Both executors ran tasks: each wrote shuffle files.
    for (_, work) in &executors {
        let wrote = walk(work)
            .into_iter()
            .any(|f| f.extension().is_some_and(|x| x == "arrow"));
        assert!(wrote, "{} holds no task output", work.display());
    }
    let remote = models(&dir);
    let names = |m: &[(String, Vec<String>)]| m.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&local), names(&remote));
    for name in [
        "cluster_from_views",
        "cluster_incremental",
        "cluster_from_empty",
    ] {
        assert!(
            names(&remote).iter().any(|n| n == name),
            "{name} was not built"
        );
    }
    for ((name, a), (_, b)) in local.iter().zip(&remote) {
        assert_eq!(a.len(), b.len(), "{name}: row count");
        let only_local: Vec<&String> = a.iter().filter(|r| !b.contains(r)).take(5).collect();
        let only_cluster: Vec<&String> = b.iter().filter(|r| !a.contains(r)).take(5).collect();
        assert!(
            a == b,
            "{name}: rows differ between the local and the cluster run\nlocal only: {only_local:#?}\ncluster only: {only_cluster:#?}"
        );
    }
    drop(executors);
    drop(scheduler);

    let commits = |d: &Path| {
        std::fs::read_dir(d.join("lake/models/contact_scores/_delta_log"))
            .unwrap()
            .count()
    };
    let before = commits(&dir);
    // A scheduler serving another lake (the copy's, which has its own id)
    // refuses the query instead of reading missing files as empty tables.
    let (other, foreign) = start_scheduler(&copy, "the other lake's scheduler");
    let refused = ferry(&dir)
        .args(["run", "--select", "contact_scores"])
        .args(["--engine", &format!("df://127.0.0.1:{other}")])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        text.contains("the query was planned over the lake"),
        "{text}"
    );
    drop(foreign);

    // No scheduler there: the run fails, saying where it tried, and
    // nothing is written.
    let gone = ferry(&dir)
        .args(["run", "--select", "contact_scores"])
        .args(["--engine", &format!("df://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&gone.stdout),
        String::from_utf8_lossy(&gone.stderr)
    );
    assert!(
        text.contains(&format!("Ballista cluster at df://127.0.0.1:{port}")),
        "{text}"
    );
    assert_eq!(commits(&dir), before, "a failed run committed to the table");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `--engine` and `[engine] cluster_partitions` are checked before
/// anything runs.
#[test]
fn a_malformed_engine_url_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("starter");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("ferry.toml"), dir.join("ferry.toml")).unwrap();
    for d in ["models", "sql"] {
        crate::copy_dir(&root().join(d), &dir.join(d));
    }
    let out = ferry(&dir)
        .args(["run", "--engine", "http://127.0.0.1:50050"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("df://host:port"), "{text}");

    // So is a cluster of no partitions, with its line.
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!("{toml}\n[engine]\ncluster_partitions = 0\n"),
    )
    .unwrap();
    let out = ferry(&dir).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("engine.cluster_partitions: 0 partitions"),
        "{text}"
    );
}
