//! The real `ferry` binary, end to end, in temporary project folders.

use std::path::Path;
use std::process::{Command, Output};

fn ferry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(dir)
        .args(args)
        .env_remove("FERRY_LAKE")
        .env_remove("FERRY_LOG")
        .output()
        .expect("run ferry")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "ferry failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn init(root: &Path) -> std::path::PathBuf {
    let proj = root.join("acme");
    ok(&Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["init", proj.to_str().unwrap()])
        .output()
        .unwrap());
    proj
}

#[test]
fn init_land_query_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let data = proj.join("data/contacts.jsonl");
    let out = ok(&ferry(
        &proj,
        &["land", "crm.contacts", data.to_str().unwrap()],
    ));
    assert!(out.contains("landed 10 rows into crm.contacts"), "{out}");

    let csv = ok(&ferry(
        &proj,
        &[
            "query",
            "select id, company__domain, lead_score from crm.contacts where id in (101, 103, 110) order by id",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(
        csv,
        "id,company__domain,lead_score\n101,northwind.io,71.0\n103,initech.fr,38.5\n110,,\n"
    );
    let json = ok(&ferry(
        &proj,
        &[
            "query",
            "select tags from crm.contacts where id = 101",
            "--format",
            "json",
        ],
    ));
    assert_eq!(json.trim(), r#"[{"tags":"[\"webinar\",\"pricing\"]"}]"#);
    let table = ok(&ferry(
        &proj,
        &[
            "query",
            "select source, stream, status, rows from ferry.ingestions",
        ],
    ));
    assert!(
        table.contains("| crm    | contacts | landed | 10   |"),
        "{table}"
    );
    assert!(table.trim_end().ends_with("1 row"), "{table}");
    // The lake is where ferry.toml says, and ignored by git.
    assert!(proj.join("lake/raw/crm/contacts").is_dir());
}

#[test]
fn bad_json_lines_are_quarantined_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let file = tmp.path().join("drop.jsonl");
    std::fs::write(&file, "{\"id\": 1}\n{\"id\": 2,\n\n[3]\n{\"id\": 4}\n").unwrap();
    let out = ok(&ferry(
        &proj,
        &["land", "crm.contacts", file.to_str().unwrap()],
    ));
    assert!(
        out.contains("landed 2 rows") && out.contains("2 rejected"),
        "{out}"
    );
    let q = ok(&ferry(
        &proj,
        &[
            "query",
            "select origin, reason from ferry.quarantine order by origin",
            "--format",
            "csv",
        ],
    ));
    let lines: Vec<&str> = q.lines().collect();
    assert!(
        lines[1].contains("drop.jsonl:2") && lines[1].contains("invalid JSON"),
        "{q}"
    );
    assert!(
        lines[2].contains("drop.jsonl:4") && lines[2].contains("JSON object"),
        "{q}"
    );
}

#[test]
fn a_malformed_json_file_lands_nothing_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let file = tmp.path().join("export.json");
    std::fs::write(&file, "[\n {\"id\": 1},\n {\"id\": 2\n]\n").unwrap();
    let out = ferry(&proj, &["land", "crm.contacts", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("export.json:4:"), "{err}");
    assert!(err.contains("nothing from this file was landed"), "{err}");
    assert!(!proj.join("lake/raw").exists());
}

#[test]
fn frozen_stream_fails_the_command_and_keeps_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let cfg = std::fs::read_to_string(proj.join("ferry.toml")).unwrap();
    std::fs::write(
        proj.join("ferry.toml"),
        cfg.replace("schema = \"evolve\"", "schema = \"freeze\""),
    )
    .unwrap();
    let a = tmp.path().join("a.jsonl");
    let b = tmp.path().join("b.jsonl");
    std::fs::write(&a, "{\"id\": 1, \"email\": \"a@x.io\"}\n").unwrap();
    std::fs::write(
        &b,
        "{\"id\": 2, \"email\": \"b@x.io\", \"phone\": \"555\"}\n",
    )
    .unwrap();
    ok(&ferry(
        &proj,
        &["land", "crm.contacts", a.to_str().unwrap()],
    ));
    let out = ferry(&proj, &["land", "crm.contacts", b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frozen") && err.contains("phone"), "{err}");
    let q = ok(&ferry(
        &proj,
        &[
            "query",
            "select record from ferry.quarantine",
            "--format",
            "csv",
        ],
    ));
    assert!(q.contains("555"), "{q}");
}

#[test]
fn config_errors_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path();
    std::fs::write(
        proj.join("ferry.toml"),
        "[project]\nname = \"acme\"\n\n[lake]\nurl = \"lake\"\nbucket = \"x\"\n",
    )
    .unwrap();
    let out = ferry(proj, &["query", "select 1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ferry.toml:6:1: lake.bucket: unknown field `bucket`"),
        "{err}"
    );

    let missing = ferry(&proj.join("nowhere"), &["query", "select 1"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("no ferry.toml") && err.contains("ferry init"),
        "{err}"
    );
}

#[test]
fn secrets_stay_out_of_logs_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let cfg = std::fs::read_to_string(proj.join("ferry.toml")).unwrap();
    std::fs::write(
        proj.join("ferry.toml"),
        format!("{cfg}\n[lake.options]\nconnect_token = \"${{FERRY_IT_TOKEN}}\"\n")
            .replace("url = \"lake\"", "url = \"memory://\""),
    )
    .unwrap();
    // From the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--project-dir",
            proj.to_str().unwrap(),
            "-vv",
            "query",
            "select 42 as answer",
        ])
        .env("FERRY_IT_TOKEN", "tok-7f3a9c-very-secret")
        .env_remove("FERRY_LAKE")
        .output()
        .unwrap();
    let stdout = ok(&out);
    assert!(stdout.contains("42"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loaded project"),
        "debug logging should show the config: {stderr}"
    );
    assert!(stderr.contains("connect_token"), "{stderr}");
    assert!(
        !stderr.contains("tok-7f3a9c"),
        "secret leaked into logs: {stderr}"
    );

    // From secrets.toml when the environment does not have it.
    std::fs::write(
        proj.join("secrets.toml"),
        "FERRY_IT_TOKEN = \"file-5e1b-secret\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "--project-dir",
            proj.to_str().unwrap(),
            "-vv",
            "query",
            "select 1",
        ])
        .env_remove("FERRY_IT_TOKEN")
        .env_remove("FERRY_LAKE")
        .output()
        .unwrap();
    ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("file-5e1b"));

    // Missing: the error names the variable, not a value.
    std::fs::remove_file(proj.join("secrets.toml")).unwrap();
    let out = ferry(&proj, &["query", "select 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FERRY_IT_TOKEN") && err.contains("lake.options.connect_token"),
        "{err}"
    );
}

#[test]
fn sql_errors_are_reported_not_panicked() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let out = ferry(&proj, &["query", "select nope from crm.contacts"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// SIGKILL a landing at many points; every time, the lake stays readable,
/// every visible file is whole, and the table agrees with the files.
#[test]
fn kill_9_mid_landing_never_leaves_a_partial_file() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let big = tmp.path().join("big.jsonl");
    let mut text = String::new();
    for i in 0..60_000 {
        text.push_str(&format!(
            "{{\"id\": {i}, \"email\": \"user{i}@example.com\", \"score\": {}, \"company\": {{\"name\": \"Co {}\"}}}}\n",
            i % 100,
            i % 977
        ));
    }
    std::fs::write(&big, text).unwrap();
    for attempt in 0..20u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "--project-dir",
                proj.to_str().unwrap(),
                "land",
                "crm.contacts",
                big.to_str().unwrap(),
            ])
            .env_remove("FERRY_LAKE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + attempt * 37));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        let mut file_rows = 0i64;
        let raw = proj.join("lake/raw/crm/contacts");
        if raw.exists() {
            for day in std::fs::read_dir(&raw).unwrap() {
                for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
                    let p = f.unwrap().path();
                    if p.extension().is_some_and(|e| e == "parquet") {
                        let r = SerializedFileReader::new(std::fs::File::open(&p).unwrap())
                            .unwrap_or_else(|e| panic!("partial file {}: {e}", p.display()));
                        file_rows += r.metadata().file_metadata().num_rows();
                    }
                }
            }
        }
        assert_eq!(file_rows % 60_000, 0, "a file holds a whole landing");
        let q = ferry(
            &proj,
            &[
                "query",
                "select count(*) as n from crm.contacts",
                "--format",
                "csv",
            ],
        );
        if file_rows > 0 {
            assert_eq!(ok(&q), format!("n\n{file_rows}\n"));
        }
    }
}

/// `ferry init --template gtm` writes the starter project from the binary,
/// so `ferry demo` runs anywhere, not only in a clone of the repository; in
/// a folder with no project, `ferry demo` says how to get one.
#[test]
fn the_gtm_template_runs_the_demo_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ferry(tmp.path(), &["demo"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ferry init --template gtm"),
        "the demo offers the template: {err}"
    );
    let proj = tmp.path().join("gtm-demo");
    let said = ok(&Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["init", "--template", "gtm", proj.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(said.contains("demo"), "{said}");
    let gitignore = std::fs::read_to_string(proj.join(".gitignore")).unwrap();
    assert!(gitignore.contains("/target/") && gitignore.contains("/lake/"));
    let out = ok(&ferry(&proj, &["demo", "--scale", "200", "--threads", "2"]));
    assert!(out.contains("demo finished"), "{out}");
    assert!(
        proj.join("lake").is_dir(),
        "the demo's lake is the project's"
    );
}

/// `ferry test` with nothing to test says how to add a test; an empty
/// `tag:` and `--threads 0` are refused, not run as "nothing" or "serial";
/// counts read "1 model".
#[test]
fn empty_selections_zero_threads_and_no_tests_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let out = ok(&ferry(&proj, &["test"]));
    assert!(
        out.contains("no tests selected") && out.contains("data_tests"),
        "{out}"
    );
    for args in [
        &["run", "--select", "tag:"][..],
        &["run", "--select", "path:"],
    ] {
        let out = ferry(&proj, args);
        assert!(!out.status.success(), "{args:?} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("names nothing"), "{args:?}: {err}");
    }
    let out = ferry(&proj, &["run", "--threads", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
    // The example model reads crm.contacts, not landed yet: one model fails.
    let out = ferry(&proj, &["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 model failed"), "{err}");
}

/// A `source()` the lake does not hold: the line of the call, the name as
/// the model writes it (not `datafusion.crm.contact`), what to do, and the
/// nearest name the lake has.
#[test]
fn a_missing_source_names_its_line_the_users_name_and_the_nearest() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let model = proj.join("models/contacts_by_country.sql");
    let sql = std::fs::read_to_string(&model).unwrap();
    let line = sql
        .lines()
        .position(|l| l.contains("source('crm', 'contacts')"))
        .unwrap()
        + 1;
    std::fs::write(&model, sql.replace("'contacts')", "'contact')")).unwrap();
    let data = proj.join("data/contacts.jsonl");
    ok(&ferry(
        &proj,
        &["land", "crm.contacts", data.to_str().unwrap()],
    ));
    let out = ferry(&proj, &["run"]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!(
            "contacts_by_country.sql:{line}: crm.contact is not in the lake"
        )),
        "{text}"
    );
    assert!(text.contains("did you mean crm.contacts"), "{text}");
    assert!(
        !text.contains("datafusion."),
        "engine names stay out: {text}"
    );
}
