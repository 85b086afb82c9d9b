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
    // Rows refused on the way: the rest lands, and the exit code says 3.
    let out = ferry(&proj, &["land", "crm.contacts", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    let said = both(&out);
    assert!(
        said.contains("landed 2 rows") && said.contains("2 rejected"),
        "{said}"
    );
    assert!(
        said.contains("2 rows quarantined") && said.contains("--allow-rejects"),
        "{said}"
    );
    // --allow-rejects: the same outcome counts as a success.
    let out = ok(&ferry(
        &proj,
        &[
            "land",
            "crm.contacts",
            file.to_str().unwrap(),
            "--allow-rejects",
        ],
    ));
    assert!(out.contains("landed 2 rows"), "{out}");
    let q = ok(&ferry(
        &proj,
        &[
            "query",
            "select distinct origin, reason from ferry.quarantine order by origin",
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

/// A file that is not there is the user's to fix: said once, with the
/// path, and not as a storage failure that running again might cure.
#[test]
fn a_missing_input_file_is_said_once_and_not_as_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let out = ferry(&proj, &["land", "crm.contacts", "nope.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("nope.jsonl: ") && err.contains("check the path"),
        "{err}"
    );
    assert_eq!(err.matches("nope.jsonl").count(), 1, "said once: {err}");
    assert!(
        !err.contains("may succeed") && !err.contains("temporar"),
        "{err}"
    );
    // Among several files, each missing one is named once and the rest land.
    let good = proj.join("data/contacts.jsonl");
    let out = ferry(
        &proj,
        &["land", "crm.contacts", "nope.jsonl", good.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = both(&out);
    assert!(said.contains("landed 10 rows"), "{said}");
    assert_eq!(said.matches("nope.jsonl").count(), 1, "{said}");
    assert!(said.contains("1 of 2 files not landed"), "{said}");
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

/// The starter project after a demo: a temporary folder holding it.
fn demo_project(root: &Path) -> std::path::PathBuf {
    let proj = root.join("gtm");
    ok(&Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["init", "--template", "gtm", proj.to_str().unwrap()])
        .output()
        .unwrap());
    ok(&ferry(&proj, &["demo", "--scale", "300", "--threads", "2"]));
    proj
}

fn both(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ferry check` validates without calling anyone: secrets per source and
/// sync, models with file:line, a data test on a missing column with its
/// schema file's line; it passes once they are fixed.
#[test]
fn check_names_each_problem_where_it_is_and_passes_once_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = demo_project(tmp.path());
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.arg("check")
            .arg("--project-dir")
            .arg(&proj)
            .args(args)
            .env_remove("HUBSPOT_TOKEN")
            .env_remove("MARKETING_API_TOKEN")
            .env_remove("FERRY_LOG");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Without the tokens: each source and sync that needs one is named, with
    // the line of ferry.toml; the models are fine.
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = both(&out);
    assert!(text.contains("secrets  FAIL 5 problems"), "{text}");
    assert!(
        text.contains("source hubspot: ./ferry.toml:") || text.contains("source hubspot: "),
        "{text}"
    );
    assert!(text.contains("HUBSPOT_TOKEN is not set"), "{text}");
    assert!(
        text.contains("sync contact_scores: destination hubspot"),
        "{text}"
    );
    assert!(text.contains("models   OK   26 models compile"), "{text}");
    let tokens = [("HUBSPOT_TOKEN", "t"), ("MARKETING_API_TOKEN", "m")];
    let out = run(&tokens, &[]);
    assert!(out.status.success(), "{}", both(&out));
    // A typo in a model: its file and line, and the models below it are
    // not reported one by one.
    let model = proj.join("models/marts/dim_people.sql");
    let sql = std::fs::read_to_string(&model).unwrap();
    std::fs::write(&model, sql.replacen("select", "selec", 1)).unwrap();
    let out = run(&tokens, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = both(&out);
    assert!(
        text.contains("model dim_people: models/marts/dim_people.sql:"),
        "{text}"
    );
    assert!(
        text.contains("downstream of a failing one not checked"),
        "{text}"
    );
    assert!(!text.contains("Debug"), "{text}");
    std::fs::write(&model, &sql).unwrap();
    // A data test on a column its model does not have: the schema file's line.
    let schema = proj.join("models/staging/schema.yml");
    let yml = std::fs::read_to_string(&schema).unwrap();
    let line = yml
        .lines()
        .position(|l| l.contains("{name: is_free_email,"))
        .expect("stg_hubspot__contacts tests is_free_email")
        + 1;
    std::fs::write(
        &schema,
        yml.replacen("{name: is_free_email,", "{name: is_free_emal,", 1),
    )
    .unwrap();
    let out = run(&tokens, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = both(&out);
    assert!(
        text.contains(&format!(
            "models/staging/schema.yml:{line} (model stg_hubspot__contacts, column is_free_emal)"
        )),
        "{text}"
    );
    assert!(text.contains("did you mean is_free_email"), "{text}");
    std::fs::write(&schema, &yml).unwrap();
    // A bad selection is refused.
    let out = run(&tokens, &["--select", "tag:"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
}

/// `ferry build` checks first: without the HubSpot token, the HubSpot
/// source and syncs fail and say why, while the marketing sources are
/// still extracted and the models still built.
#[test]
fn a_missing_secret_fails_only_what_needs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = demo_project(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["build", "--skip-extract", "--project-dir"])
        .arg(&proj)
        .args(["--vars", "as_of=2026-01-01T00:00:00Z", "--format", "json"])
        .env_remove("HUBSPOT_TOKEN")
        .env("MARKETING_API_TOKEN", "m")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stage = |name: &str| {
        doc["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stage("check")["status"], "failed");
    assert!(
        stage("check")["detail"]
            .as_str()
            .unwrap()
            .contains("HUBSPOT_TOKEN")
    );
    assert_eq!(stage("run")["status"], "ok", "{doc}");
    assert_eq!(stage("test")["status"], "ok", "{doc}");
    // The syncs needing the token were left out, not sent.
    assert_eq!(stage("sync")["status"], "skipped", "{doc}");
    assert!(doc["models"].as_array().unwrap().len() >= 20);
}

/// `--format json`: one document on stdout with a stable shape, the human
/// lines on stderr.
#[test]
fn json_output_is_one_document_with_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = demo_project(tmp.path());
    let json = |args: &[&str]| -> (Option<i32>, serde_json::Value) {
        let out = ferry(&proj, args);
        let doc = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {}", both(&out)));
        (out.status.code(), doc)
    };
    let (code, run) = json(&["run", "--select", "dim_people", "--format", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(run["command"], "run");
    assert_eq!(run["status"], "success");
    assert_eq!(run["version"], 1);
    assert!(run["error"].is_null());
    assert_eq!(run["models"][0]["name"], "dim_people");
    assert!(run["models"][0]["rows"].as_u64().unwrap() > 0);
    for key in ["unique_id", "materialized", "status", "seconds", "error"] {
        assert!(run["models"][0].get(key).is_some(), "{key} in {run}");
    }
    let (code, test) = json(&["test", "--select", "dim_people", "--format", "json"]);
    assert_eq!(code, Some(0));
    assert!(test["counts"]["pass"].as_u64().unwrap() > 0);
    let t = &test["tests"][0];
    for key in ["name", "kind", "status", "failures", "seconds", "message"] {
        assert!(t.get(key).is_some(), "{key} in {t}");
    }
    let (code, schedules) = json(&["schedules", "--format", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(schedules["schedules"], serde_json::json!([]));
    // A command that fails before doing anything still prints its document.
    let (code, extract) = json(&["extract", "nope", "--format", "json"]);
    assert_eq!(code, Some(1));
    assert_eq!(extract["status"], "failed");
    assert!(
        extract["error"]
            .as_str()
            .unwrap()
            .contains("nothing to extract matches")
    );
    // query --format json keeps null keys.
    let out = ok(&ferry(
        &proj,
        &[
            "query",
            "select 1 as a, cast(null as varchar) as b",
            "--format",
            "json",
        ],
    ));
    assert_eq!(out.trim(), r#"[{"a":1,"b":null}]"#);
}

/// Refused rows make the exit code 3 (and the summary says where they
/// are) unless --allow-rejects; a failed stream fails the command but the
/// other streams still land.
#[test]
fn rejects_and_failed_streams_are_in_the_summary_and_the_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let drops = proj.join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    std::fs::write(
        drops.join("a.jsonl"),
        "{\"id\": 1, \"email\": \"a@x.io\"}\nnot json\n{\"id\": 2, \"email\": \"b@x.io\"}\n",
    )
    .unwrap();
    let toml = std::fs::read_to_string(proj.join("ferry.toml")).unwrap();
    std::fs::write(
        proj.join("ferry.toml"),
        format!(
            "{toml}\n[sources.drops]\ntype = \"files\"\npath = \"drops\"\n\
             [sources.drops.streams.leads]\npattern = \"*.jsonl\"\n\
             [sources.broken]\ntype = \"rest\"\nurl = \"http://127.0.0.1:9\"\n\
             [sources.broken.streams.things]\npath = \"/things\"\n"
        ),
    )
    .unwrap();
    let out = ferry(&proj, &["extract"]);
    let text = both(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED broken.things"), "{text}");
    assert!(text.contains("1 stream FAILED: broken.things"), "{text}");
    assert!(
        text.contains("OK     drops.leads"),
        "the other stream ran: {text}"
    );
    assert!(text.contains("1 row quarantined"), "{text}");
    let failed = ok(&ferry(
        &proj,
        &[
            "query",
            "select source, stream, status from ferry.extract_runs where status = 'failed'",
            "--format",
            "csv",
        ],
    ));
    assert_eq!(failed, "source,stream,status\nbroken,things,failed\n");
    // Only the refused row left: exit 3, or 0 with --allow-rejects.
    let toml = std::fs::read_to_string(proj.join("ferry.toml")).unwrap();
    let cut = toml.find("[sources.broken]").unwrap();
    std::fs::write(proj.join("ferry.toml"), &toml[..cut]).unwrap();
    std::fs::write(drops.join("b.jsonl"), "{\"id\": 3}\n{oops\n").unwrap();
    let out = ferry(&proj, &["extract"]);
    assert_eq!(out.status.code(), Some(3), "{}", both(&out));
    assert!(both(&out).contains("--allow-rejects"), "{}", both(&out));
    std::fs::write(drops.join("c.jsonl"), "{\"id\": 4}\n{oops\n").unwrap();
    let out = ferry(&proj, &["extract", "--allow-rejects"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
}

/// Help shows examples; --project-dir works after the subcommand; colours
/// only on a terminal and never with NO_COLOR.
#[test]
fn help_examples_project_dir_after_the_subcommand_and_colours() {
    let bin = env!("CARGO_BIN_EXE_ferry");
    let help = ok(&Command::new(bin)
        .args(["build", "--help"])
        .output()
        .unwrap());
    assert!(help.contains("Examples:\n  ferry build"), "{help}");
    assert!(
        help.contains("--threads") && help.contains("Models built at once"),
        "{help}"
    );
    let help = ok(&Command::new(bin).args(["init", "--help"]).output().unwrap());
    assert!(
        !help.contains("--project-dir <"),
        "init takes no project: {help}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let out = ok(&Command::new(bin)
        .args(["test", "--project-dir"])
        .arg(&proj)
        .output()
        .unwrap());
    assert!(out.contains("no tests selected"), "{out}");
    assert!(!out.contains('\x1b'), "no colour into a pipe: {out:?}");
    // Under a terminal (script(1) gives one) the status words are coloured,
    // unless NO_COLOR is set.
    if Command::new("script").arg("--version").output().is_ok() {
        let data = proj.join("data/contacts.jsonl");
        ok(&ferry(
            &proj,
            &["land", "crm.contacts", data.to_str().unwrap()],
        ));
        let cmd = format!("{bin} run --project-dir {}", proj.display());
        let tty = |no_color: bool| {
            let mut c = Command::new("script");
            c.args(["-qec", &cmd, "/dev/null"]);
            if no_color {
                c.env("NO_COLOR", "1");
            } else {
                c.env_remove("NO_COLOR");
            }
            c.env("TERM", "xterm");
            String::from_utf8_lossy(&c.output().unwrap().stdout).to_string()
        };
        assert!(tty(false).contains("\x1b[32mOK"), "{:?}", tty(false));
        assert!(!tty(true).contains("\x1b[32m"), "{:?}", tty(true));
    }
}

/// The docs site in headless Chromium: it renders from disk with no
/// network, its graph holds the syncs, and the lineage links lead from a
/// CRM field back, page by page, to the raw vendor column.
#[test]
fn the_docs_site_renders_in_chromium_and_lineage_leads_to_the_vendor_column() {
    let chromium = std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    if Command::new(&chromium).arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install Chromium (.ci/run does): {chromium} not found"
        );
        eprintln!("skipped: no {chromium} on PATH (apt-get install chromium)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let proj = demo_project(tmp.path());
    ok(&ferry(&proj, &["test"]));
    let said = ok(&ferry(&proj, &["docs"]));
    assert!(said.contains("documented 26 models"), "{said}");
    let page = proj.join("target/docs/index.html");
    let dom = |hash: &str| -> String {
        let out = Command::new(&chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--dump-dom",
            ])
            .arg(format!("file://{}{hash}", page.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", both(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let home = dom("");
    let body = |page: &str| -> String {
        let at = page.find("<body").expect("a body");
        page[at..at + page[at..].find('>').unwrap()].to_string()
    };
    assert!(body(&home).contains("data-rendered=\"1\""), "not rendered");
    assert!(
        !body(&home).contains("data-js-errors"),
        "script errors: {}",
        body(&home)
    );
    assert!(home.contains("id=\"graph\"") && home.contains("data-id=\"sync.contact_scores\""));
    assert!(home.contains("id=\"search\"") && home.contains("id=\"sidebar\""));
    // Follow the lineage of ferry_lead_score through the pages themselves.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(proj.join("target/docs/manifest.json")).unwrap(),
    )
    .unwrap();
    let node = |id: &str| {
        manifest["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id}"))
    };
    let (mut id, mut col) = (
        "sync.contact_scores".to_string(),
        "ferry_lead_score".to_string(),
    );
    let mut hops = Vec::new();
    loop {
        let page = dom(&format!("#!/{id}/{col}"));
        assert!(
            !body(&page).contains("data-js-errors"),
            "{id}: {}",
            body(&page)
        );
        assert!(
            page.contains(&format!("data-node-id=\"{id}\"")),
            "{id} page"
        );
        assert!(
            page.contains(&format!("data-column=\"{col}\"")),
            "{id}/{col} row"
        );
        let n = node(&id);
        if n["kind"] == "source" {
            break;
        }
        let up = n["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == col.as_str())
            .unwrap()["lineage"][0]
            .clone();
        assert!(up.is_object(), "{id}/{col} has no lineage");
        let (next, next_col) = (
            up["node"].as_str().unwrap().to_string(),
            up["column"].as_str().unwrap().to_string(),
        );
        assert!(
            page.contains(&format!("href=\"#!/{next}/{next_col}\"")),
            "{id}/{col} links to {next}/{next_col}"
        );
        hops.push(format!("{id}.{col}"));
        (id, col) = (next, next_col);
        assert!(hops.len() < 20, "lineage loops: {hops:?}");
    }
    assert!(
        id.starts_with("source.hubspot.") || id.starts_with("source.marketing."),
        "{hops:?} ended at {id}"
    );
    // Test results are on the model pages.
    let scores = dom("#!/model.contact_scores");
    assert!(scores.contains("badge pass"), "test results shown");
    // A screenshot, as the README shows it.
    let shot = tmp.path().join("docs.png");
    let out = Command::new(&chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,800",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", both(&out));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot"
    );
}

/// `ferry docs --serve` serves the same page and manifest.
#[test]
fn docs_serve_serves_the_page() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "docs",
            "--serve",
            "--port",
            &port.to_string(),
            "--project-dir",
        ])
        .arg(&proj)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let mut page = None;
    for _ in 0..100 {
        if let Some(p) = get("/") {
            page = Some(p);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let manifest = get("/manifest.json");
    let _ = child.kill();
    let _ = child.wait();
    let page = page.expect("ferry docs --serve answers");
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert!(
        page.contains("text/html") && page.contains("\"version\":2"),
        "manifest inlined"
    );
    assert!(manifest.unwrap().contains("\"nodes\""));
}

/// A typo in `[models]` or `[syncs.*]` names ferry.toml's line and key,
/// and the nearest known name.
#[test]
fn typos_in_models_and_syncs_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let toml = std::fs::read_to_string(proj.join("ferry.toml")).unwrap();
    let line = toml.lines().count() + 3;
    std::fs::write(
        proj.join("ferry.toml"),
        format!("{toml}\n[models]\nmaterialzed = \"table\"\n"),
    )
    .unwrap();
    let out = ferry(&proj, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!(
            "ferry.toml:{line}:1: models.materialzed: unknown config"
        )),
        "{err}"
    );
    assert!(err.contains("did you mean materialized"), "{err}");
    std::fs::write(
        proj.join("ferry.toml"),
        format!(
            "{toml}\n[destinations.hubspot]\ntype = \"hubspot\"\ntoken = \"x\"\n\
             [syncs.scores]\nmodle = \"contacts_by_country\"\ndestination = \"hubspot\"\n"
        ),
    )
    .unwrap();
    let line = toml.lines().count() + 6;
    let out = ferry(&proj, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!("ferry.toml:{line}:1: syncs.scores.modle: unknown field `modle`, expected one of `model`")),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "said once: {err}");
}

/// `[engine] memory_limit` is honoured: a sort over far more than the limit
/// spills to disk and succeeds; with spilling off, the same query fails
/// and the error names the setting to change.
#[test]
fn a_query_past_the_memory_limit_spills_and_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = init(tmp.path());
    let toml = std::fs::read_to_string(proj.join("ferry.toml")).unwrap();
    let spill = tmp.path().join("spill");
    let write = |extra: &str| {
        std::fs::write(
            proj.join("ferry.toml"),
            format!(
                "{toml}\n[engine]\nmemory_limit = \"96MiB\"\nspill_dir = \"{}\"\n{extra}",
                spill.display()
            ),
        )
        .unwrap()
    };
    // 5M rows of 32-character strings: ~300 MiB to sort in 96 MiB.
    let sql = "select max(rn) as n from (select row_number() over (order by h) as rn \
               from (select md5(cast(v as varchar)) as h from generate_series(1, 5000000) as t(v)))";
    write("");
    let out = ferry(&proj, &["query", sql, "--format", "csv"]);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n5000000\n");
    assert!(spill.is_dir(), "spill files go to spill_dir");
    write("spill = false\n");
    let out = ferry(&proj, &["query", sql, "--format", "csv"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory limit 96.0 MiB"), "{err}");
    assert!(err.contains("spill = false"), "{err}");
    // A limit that is not a size is refused with its line.
    write("");
    std::fs::write(
        proj.join("ferry.toml"),
        format!("{toml}\n[engine]\nmemory_limit = \"lots\"\n"),
    )
    .unwrap();
    let out = ferry(&proj, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("engine.memory_limit: \"lots\" is not a size"),
        "{err}"
    );
}
