//! The lake on S3: the same commands and library calls as on a folder,
//! against a real S3 API (moto's S3 server on loopback, `tests/s3/serve.py`),
//! with the faults S3 has: 503 SlowDown, and replies lost after the write
//! was applied.
//!
//! The server runs from a Python venv: `FERRY_TEST_S3_PYTHON` names its
//! interpreter, else `target/s3-venv/bin/python`, which the first test that
//! needs it creates (`pip install -r tests/s3/requirements.txt`). Without a
//! venv and without network, these tests skip, except under `CI=1`, where
//! they fail.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use ferry::lake::Lake;
use ferry::project::Project;

/// A running S3 server with one bucket, `ferry`. Killed when dropped.
pub struct S3 {
    child: Child,
    pub port: u16,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_TEST_S3_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let venv = root.join("s3-venv");
    let python = venv.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    // Build it aside and move it into place: tests run in parallel
    // processes, and the first rename wins.
    let aside = root.join(format!("s3-venv.{}", std::process::id()));
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&aside)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(aside.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/requirements.txt"))
            .status()
            .is_ok_and(|s| s.success());
    if made {
        let _ = std::fs::rename(&aside, &venv);
    }
    let _ = std::fs::remove_dir_all(&aside);
    python.exists().then_some(python)
}

impl S3 {
    /// Start a server (`faults` as `serve.py` takes them), or `None` when no
    /// Python with moto can be had and this is not CI.
    pub fn start(faults: &[&str]) -> Option<S3> {
        let Some(python) = venv_python() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the S3 tests: python3 -m venv target/s3-venv && \
                 target/s3-venv/bin/pip install -r tests/s3/requirements.txt"
            );
            eprintln!("skipped: no Python venv with moto for the S3 server (see tests/it/s3.rs)");
            return None;
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/serve.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(faults)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the S3 server's port");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the S3 server did not start: {line:?}"));
        Some(S3 { child, port })
    }

    /// The lake URL of `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://ferry/{prefix}")
    }

    /// A `[lake]` section for ferry.toml.
    pub fn lake_toml(&self, prefix: &str) -> String {
        format!(
            "[lake]\nurl = \"{}\"\n[lake.options]\n{}",
            self.url(prefix),
            self.options()
                .iter()
                .map(|(k, v)| format!("{k} = \"{v}\"\n"))
                .collect::<String>()
        )
    }

    /// `[lake.options]` for this server.
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "ferry-test".into()),
            ("aws_secret_access_key", "ferry-test-secret".into()),
            ("aws_region", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The same settings as `AWS_*` environment variables, for a binary
    /// pointed at the lake by `FERRY_LAKE` alone.
    pub fn env(&self) -> Vec<(String, String)> {
        self.options()
            .into_iter()
            .map(|(k, v)| (k.to_uppercase(), v))
            .collect()
    }

    /// The lake, opened from the library.
    pub fn lake(&self, prefix: &str) -> Lake {
        let options = self
            .options()
            .into_iter()
            .map(|(k, v)| (k, ferry::project::secret::Secret::new(v)))
            .collect();
        Lake::from_url(&self.url(prefix), Path::new("."), &options).unwrap()
    }
}

/// Replace a project's `[lake]` (or add one): the one-line move to S3.
pub fn move_lake(dir: &Path, lake_toml: &str) {
    let path = dir.join("ferry.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skipping = line.trim() == "[lake]" || line.trim() == "[lake.options]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(lake_toml);
    std::fs::write(&path, out).unwrap();
    Project::load(dir).expect("the project loads with its lake on S3");
}

fn ferry(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(dir)
        .args(args)
        .env_remove("FERRY_LOG")
        .env_remove("FERRY_LAKE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run ferry")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "ferry failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every row of `sql` as JSON text, sorted, with ferry's own columns (run
/// ids, load times) left out.
fn rows(dir: &Path, sql: &str, env: &[(String, String)]) -> Vec<String> {
    let out = ok(ferry(dir, &["query", "--format", "json", sql], env));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut rows: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("query json is an array of rows: {out}"))
        .iter()
        .map(|r| {
            let mut r = r.as_object().unwrap().clone();
            r.retain(|k, _| !k.starts_with("_ferry"));
            serde_json::Value::Object(r).to_string()
        })
        .collect();
    rows.sort();
    rows
}

/// The same rows, or the first that differs.
fn same(folder: &[String], s3: &[String], what: &str) {
    assert!(!folder.is_empty(), "{what}: no rows");
    assert_eq!(
        folder.len(),
        s3.len(),
        "{what}: row counts differ (folder, S3)"
    );
    if let Some((a, b)) = folder.iter().zip(s3).find(|(a, b)| a != b) {
        panic!("{what}: a folder lake and an S3 lake differ:\n  folder: {a}\n  S3:     {b}");
    }
}

/// `ferry demo` on S3 (extract with its cursors, landing, seeds, Delta
/// models, tests, sync state) gives the same tables as on a folder, though
/// the server refuses some requests 503 and cuts some connections after
/// applying the PUT; and the lake then takes a second run of every model.
#[test]
fn the_demo_on_s3_equals_the_demo_in_a_folder() {
    let Some(s3) = S3::start(&["--slowdown-every", "29", "--drop-every", "13"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gtm");
    ok(ferry(
        tmp.path(),
        &["init", "--template", "gtm", dir.to_str().unwrap()],
        &[],
    ));
    let folder = ok(ferry(&dir, &["demo"], &[]));
    let mut env = s3.env();
    env.push(("FERRY_LAKE".into(), s3.url("demo")));
    let on_s3 = ok(ferry(&dir, &["demo"], &env));
    for out in [&folder, &on_s3] {
        assert!(out.contains("71 passed"), "{out}");
    }
    assert!(on_s3.contains("lake: s3://ferry/demo"), "{on_s3}");
    for sql in [
        "select * from contact_scores",
        "select * from mql_segment",
        "select * from attribution_credits",
        "select * from rpt_funnel",
        "select stream, rows, rejected_rows from ferry.ingestions",
        "select count(*) from hubspot.contacts",
    ] {
        let a = rows(&dir, sql, &[]);
        let b = rows(&dir, sql, &env);
        same(&a, &b, sql);
    }
    // Sync state is on S3: what the demo sent is recorded there.
    let sent = "select sync, count(*) as n from ferry.sync_log group by sync";
    same(&rows(&dir, sent, &[]), &rows(&dir, sent, &env), sent);
    // A second run commits a new version of every Delta table on S3. Both
    // score at one fixed moment: ferry.toml's as_of is "" (now), and two runs
    // seconds apart decay engagement differently (a score near a rounding
    // boundary flipped 2.4/2.3 in CI).
    let as_of = "as_of=2026-11-01T00:00:00Z";
    ok(ferry(&dir, &["run", "--vars", as_of], &[]));
    ok(ferry(&dir, &["run", "--vars", as_of], &env));
    let sql = "select * from contact_scores";
    same(&rows(&dir, sql, &[]), &rows(&dir, sql, &env), sql);
}
