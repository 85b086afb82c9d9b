//! Reverse sync end to end, over real HTTP against the HubSpot emulator.
//! Projects are temporary folders with a view model written as VALUES, so
//! each test changes "the model" by rewriting one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry::lake::Lake;
use ferry::project::Project;
use ferry::sim::hubspot::store::PropertyDef;
use ferry::sim::hubspot::{self, Faults, RunningSim, SimConfig};
use ferry::sync::{SyncOptions, SyncReport, Syncer};

const TOKEN: &str = "sync-test-token";

pub async fn sim(config: SimConfig) -> RunningSim {
    let s = hubspot::start(
        SimConfig {
            token: TOKEN.into(),
            ..config
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    define(&s, "contacts", "ferry_lead_score", "number", false);
    define(&s, "contacts", "ferry_persona", "string", false);
    s
}

pub fn define(s: &RunningSim, kind: &str, name: &str, typ: &str, unique: bool) {
    s.with_crm(|crm| {
        crm.types.get_mut(kind).unwrap().define(PropertyDef {
            name: name.into(),
            label: name.into(),
            kind: typ.into(),
            field_type: "text".into(),
            has_unique_value: unique,
        })
    })
    .unwrap();
}

pub fn plant(s: &RunningSim, kind: &str, props: &[(&str, &str)]) -> u64 {
    s.with_crm(|crm| {
        crm.create(
            kind,
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .id
    })
    .unwrap()
}

/// Live records of `kind` keyed by `property`, with their properties.
pub fn crm(
    s: &RunningSim,
    kind: &str,
    property: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for r in s.records(kind) {
        let key = r.properties.get(property).cloned().unwrap_or_default();
        assert!(
            out.insert(key.clone(), r.properties.clone()).is_none(),
            "duplicate {kind} record for {property} = {key}"
        );
    }
    out
}

/// A project folder whose sync `scores` writes the view model `scores` to
/// HubSpot contacts.
pub fn project(dir: &Path, sim_url: &str, sync: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        format!("HS_TOKEN = \"{TOKEN}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "synctest"

[destinations.hubspot]
type = "hubspot"
url = "{sim_url}"
# The emulator's search lags writes by 1 s.
search_lag_seconds = 2
token = "${{HS_TOKEN}}"
max_attempts = 8
backoff_initial_ms = 20
backoff_max_ms = 200
timeout_seconds = 5

{sync}
"#
        ),
    )
    .unwrap();
    dir.to_path_buf()
}

pub const SCORES: &str = r#"[syncs.scores]
model = "scores"
destination = "hubspot"
object = "contacts"
mode = "upsert"
match = { column = "email", property = "email" }

[syncs.scores.fields]
lead_score = "ferry_lead_score"
persona = "ferry_persona"
"#;

/// Rows of the `scores` model: (email, lead_score, persona).
pub type Rows = Vec<(Option<String>, Option<String>, Option<String>)>;

pub fn rows(n: usize, salt: &str) -> Rows {
    (0..n)
        .map(|i| {
            (
                Some(format!("person{i}@example.com")),
                Some(format!("{}", (i * 7) % 100)),
                Some(format!("persona-{salt}-{}", i % 5)),
            )
        })
        .collect()
}

fn lit(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{}'", s.replace('\'', "''")),
        None => "null".into(),
    }
}

/// Write the view model `name` holding `rows` (email, lead_score, persona).
pub fn model(dir: &Path, name: &str, rows: &Rows) {
    let sql = if rows.is_empty() {
        "{{ config(materialized='view') }}\nselect cast(null as varchar) as email, cast(null as varchar) as lead_score, \
         cast(null as varchar) as persona where false\n"
            .to_string()
    } else {
        let values: Vec<String> = rows
            .iter()
            .map(|r| format!("({}, {}, {})", lit(&r.0), lit(&r.1), lit(&r.2)))
            .collect();
        format!(
            "{{{{ config(materialized='view') }}}}\nselect cast(column1 as varchar) as email, cast(column2 as varchar) as lead_score, \
             cast(column3 as varchar) as persona from (values {}) as v\n",
            values.join(",\n")
        )
    };
    std::fs::write(dir.join("models").join(format!("{name}.sql")), sql).unwrap();
}

pub async fn sync(dir: &Path, name: &str, opts: SyncOptions) -> ferry::Result<SyncReport> {
    let project = Project::load(dir)?;
    let lake = Lake::open(&project.lake, &project.dir)?;
    Syncer::new(&project, lake).run(name, &opts).await
}

pub async fn query(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    let project = Project::load(dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let ctx = ferry::engine::session(&lake).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let cols: Vec<_> = (0..b.num_columns())
            .map(|i| arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        let a = arrow::array::AsArray::as_string::<i32>(c);
                        if arrow::array::Array::is_null(a, r) {
                            "NULL".to_string()
                        } else {
                            a.value(r).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

/// The CRM's contacts equal the model: same keys, same mapped values.
pub fn assert_matches(s: &RunningSim, rows: &Rows) {
    let state = crm(s, "contacts", "email");
    let mut want = BTreeMap::new();
    for r in rows {
        want.insert(
            r.0.clone().unwrap().to_lowercase(),
            (r.1.clone(), r.2.clone()),
        );
    }
    let got: BTreeMap<String, (Option<String>, Option<String>)> = state
        .iter()
        .map(|(k, p)| {
            (
                k.clone(),
                (
                    p.get("ferry_lead_score").cloned(),
                    p.get("ferry_persona").cloned(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_sends_only_what_changed() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let mut data = rows(250, "a");
    model(&dir, "scores", &data);

    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (250, 0, 0)
    );
    // One properties check + three batches of at most 100.
    assert_eq!(r.api_calls, 4, "{r:?}");
    assert_matches(&s, &data);

    // Nothing changed: nothing is sent.
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (0, 0, 250)
    );
    assert_eq!(r.api_calls, 1);

    // Three rows change: one batch carries exactly those three.
    for i in [3, 77, 201] {
        data[i].1 = Some("99".into());
    }
    data[5].2 = None; // overwrite policy: a null clears the CRM value
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (0, 4, 246)
    );
    assert_eq!(r.api_calls, 2);
    assert_matches(&s, &data);

    let log = query(
        &dir,
        &format!(
            "select operation, status, count(*) from ferry.sync_log where run_id = '{}' group by 1, 2",
            r.run_id
        ),
    )
    .await;
    assert_eq!(
        log,
        vec![vec!["upsert".to_string(), "ok".into(), "4".into()]]
    );
    let runs = query(
        &dir,
        "select count(*), sum(created), sum(updated) from ferry.sync_runs",
    )
    .await;
    assert_eq!(runs, vec![vec!["3".to_string(), "250".into(), "4".into()]]);
}

pub fn sync_toml(
    name: &str,
    model: &str,
    object: &str,
    mode: &str,
    key: (&str, &str),
    fields: &str,
    extra: &str,
) -> String {
    format!(
        "[syncs.{name}]\nmodel = \"{model}\"\ndestination = \"hubspot\"\nobject = \"{object}\"\nmode = \"{mode}\"\n\
         match = {{ column = \"{}\", property = \"{}\" }}\n{extra}\n[syncs.{name}.fields]\n{fields}\n",
        key.0, key.1
    )
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_never_creates_and_reports_missing_records() {
    let s = sim(SimConfig::default()).await;
    plant(
        &s,
        "contacts",
        &[("email", "known@example.com"), ("ferry_lead_score", "1")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let toml = sync_toml(
        "scores",
        "scores",
        "contacts",
        "update",
        ("email", "email"),
        "lead_score = \"ferry_lead_score\"",
        "",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    model(
        &dir,
        "scores",
        &vec![
            (some("KNOWN@example.com"), some("50"), None),
            (some("stranger@example.com"), some("60"), None),
        ],
    );
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (0, 1, 1),
        "{r:?}"
    );
    let state = crm(&s, "contacts", "email");
    assert_eq!(state.len(), 1);
    assert_eq!(state["known@example.com"]["ferry_lead_score"], "50");
    // The 207 per-record error is in the log with HubSpot's category.
    let log = query(
        &dir,
        "select key, status, error_category from ferry.sync_log where status <> 'ok'",
    )
    .await;
    assert_eq!(
        log,
        vec![vec![
            "stranger@example.com".to_string(),
            "rejected".into(),
            "OBJECT_NOT_FOUND".into()
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_mode_leaves_existing_records_alone() {
    let s = sim(SimConfig::default()).await;
    plant(
        &s,
        "contacts",
        &[("email", "known@example.com"), ("ferry_lead_score", "1")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let toml = sync_toml(
        "scores",
        "scores",
        "contacts",
        "insert",
        ("email", "email"),
        "lead_score = \"ferry_lead_score\"",
        "",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    model(
        &dir,
        "scores",
        &vec![
            (some("known@example.com"), some("50"), None),
            (some("new@example.com"), some("60"), None),
        ],
    );
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.skipped), (1, 1), "{r:?}");
    let state = crm(&s, "contacts", "email");
    assert_eq!(state["known@example.com"]["ferry_lead_score"], "1");
    assert_eq!(state["new@example.com"]["ferry_lead_score"], "60");
    // Both are confirmed: the next run sends nothing.
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.unchanged, r.api_calls), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_policies_protect_crm_values() {
    let s = sim(SimConfig::default()).await;
    define(&s, "contacts", "ferry_owner_note", "string", false);
    // A rep typed a persona for ann; bob's is empty; both have a note.
    plant(
        &s,
        "contacts",
        &[
            ("email", "ann@example.com"),
            ("ferry_persona", "Rep's call"),
            ("ferry_owner_note", "keep"),
        ],
    );
    plant(
        &s,
        "contacts",
        &[("email", "bob@example.com"), ("ferry_owner_note", "keep")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let toml = sync_toml(
        "scores",
        "scores",
        "contacts",
        "upsert",
        ("email", "email"),
        "lead_score = \"ferry_lead_score\"\npersona = { property = \"ferry_persona\", policy = \"if_empty\" }\n\
         note = { property = \"ferry_owner_note\", policy = \"skip_nulls\" }",
        "",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    std::fs::write(dir.join("models/scores.sql"),
        "{{ config(materialized='view') }}\nselect cast(column1 as varchar) as email, cast(column2 as varchar) as lead_score, \
         cast(column3 as varchar) as persona, cast(column4 as varchar) as note from (values \
         ('ann@example.com', '10', 'Marketing Leader', null), ('bob@example.com', '20', 'Sales Leader', null), \
         ('cy@example.com', null, 'Ops', 'fresh'))").unwrap();
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert!(r.clean(), "{r:?}");
    let state = crm(&s, "contacts", "email");
    assert_eq!(
        state["ann@example.com"]["ferry_persona"], "Rep's call",
        "if_empty never overwrites"
    );
    assert_eq!(
        state["bob@example.com"]["ferry_persona"], "Sales Leader",
        "if_empty fills an empty value"
    );
    assert_eq!(
        state["ann@example.com"]["ferry_owner_note"], "keep",
        "skip_nulls: a null never clears"
    );
    assert_eq!(state["cy@example.com"]["ferry_owner_note"], "fresh");
    assert_eq!(
        state["cy@example.com"]["ferry_persona"], "Ops",
        "a new record gets if_empty fields"
    );
    assert!(!state["cy@example.com"].contains_key("ferry_lead_score"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_row_in_a_batch_of_100_is_isolated_by_splitting() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let mut data = rows(100, "a");
    data[42].1 = some("not a number"); // ferry_lead_score is a number property: HubSpot 400s the whole batch
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.rejected, r.counts.failed),
        (99, 1, 0),
        "{r:?}"
    );
    // 1 check + 1 full batch + 2 per halving level (7 levels for 100 rows) at most.
    assert!(r.api_calls <= 16, "{} calls", r.api_calls);
    assert_eq!(crm(&s, "contacts", "email").len(), 99);
    let log = query(&dir, "select key, error_category, error_message, payload from ferry.sync_log where status = 'rejected'").await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0][0], "person42@example.com");
    assert_eq!(log[0][1], "VALIDATION_ERROR");
    assert!(log[0][2].contains("not a number"), "{:?}", log[0]);
    assert!(
        log[0][3].contains("not a number"),
        "the dead letter keeps the payload: {:?}",
        log[0]
    );

    // Fixed in the model: the next run sends just that row.
    data[42].1 = some("42");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.unchanged, r.api_calls),
        (1, 99, 2)
    );
    assert_matches(&s, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_stops_at_once() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    std::fs::write(dir.join("secrets.toml"), "HS_TOKEN = \"wrong\"\n").unwrap();
    model(&dir, "scores", &rows(300, "a"));
    let e = sync(&dir, "scores", SyncOptions::default())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(
        !msg.contains("wrong"),
        "the token must not be printed: {msg}"
    );
    assert_eq!(s.stats().0, 1, "exactly one call, then nothing");
    assert!(s.records("contacts").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_refreshes_once_on_401_and_continues() {
    let s = sim(SimConfig {
        oauth: Some(hubspot::OAuthApp {
            client_id: "app".into(),
            client_secret: "shh".into(),
            refresh_token: "refresh-me".into(),
        }),
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let text = std::fs::read_to_string(dir.join("ferry.toml")).unwrap().replace(
        "token = \"${HS_TOKEN}\"",
        "[destinations.hubspot.oauth]\nclient_id = \"app\"\nclient_secret = \"${HS_SECRET}\"\nrefresh_token = \"${HS_REFRESH}\"",
    );
    // The [oauth] table must come last in its destination.
    let text = text.replace(
        "max_attempts = 8\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\ntimeout_seconds = 5\n",
        "",
    );
    let text = text.replace(
        "type = \"hubspot\"\n",
        "type = \"hubspot\"\nmax_attempts = 8\nbackoff_initial_ms = 20\n",
    );
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        "HS_SECRET = \"shh\"\nHS_REFRESH = \"refresh-me\"\n",
    )
    .unwrap();
    let mut data = rows(150, "a");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.created, 150, "{r:?}");
    assert_eq!(s.token_refreshes(), 1, "the first call fetches a token");

    // The access token expires; the next run refreshes once and goes on.
    s.expire_tokens();
    data[0].1 = some("1");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.updated, 1, "{r:?}");
    assert_eq!(s.token_refreshes(), 2);
    assert_matches(&s, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_faults_still_converge_to_the_model() {
    let s = sim(SimConfig {
        faults: Faults {
            rate_limited: 0.05,
            server_error: 0.05,
            slow: 0.05,
            slow_ms: 300,
            dropped: 0.05,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let toml = SCORES.to_string() + "batch_size = 10\n";
    let toml = toml.replace("[syncs.scores.fields]\nlead_score = \"ferry_lead_score\"\npersona = \"ferry_persona\"\nbatch_size = 10\n",
        "batch_size = 10\n[syncs.scores.fields]\nlead_score = \"ferry_lead_score\"\npersona = \"ferry_persona\"\n");
    let dir = project(tmp.path(), &s.base_url(), &toml);
    let mut data = rows(300, "a");
    for i in (0..300).step_by(3) {
        data[i].2 = None;
    }
    model(&dir, "scores", &data);
    let mut runs = 0;
    loop {
        runs += 1;
        match sync(&dir, "scores", SyncOptions::default()).await {
            Ok(r) if r.clean() => break,
            Ok(r) => eprintln!("run {runs}: {:?}", r.counts),
            Err(e) => eprintln!("run {runs}: {e}"),
        }
        assert!(runs < 5, "no convergence after {runs} runs");
    }
    assert_matches(&s, &data);
    // Changing every row under faults converges too.
    let data = rows(300, "b");
    model(&dir, "scores", &data);
    for _ in 0..5 {
        if sync(&dir, "scores", SyncOptions::default())
            .await
            .is_ok_and(|r| r.clean())
        {
            break;
        }
    }
    assert_matches(&s, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_archives_only_its_own_records_and_guards_mass_deletes() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        &s.base_url(),
        &SCORES.replace("mode = \"upsert\"", "mode = \"mirror\""),
    );
    // A record the sync did not create, but will update.
    let theirs = plant(&s, "contacts", &[("email", "person0@example.com")]);
    let data = rows(50, "a");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.updated), (49, 1), "{r:?}");

    // 4 of 50 leave the model (8%): archived, except the one it did not create.
    let without_theirs: Rows = data
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 1 || *i >= 5)
        .map(|(_, r)| r.clone())
        .collect();
    model(&dir, "scores", &without_theirs);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.archived, r.counts.released), (3, 1), "{r:?}");
    let state = crm(&s, "contacts", "email");
    assert!(
        state.contains_key("person0@example.com"),
        "records the sync did not create are never archived"
    );
    assert_eq!(state.len(), 47);
    assert_eq!(
        state["person0@example.com"]["hs_object_id"],
        theirs.to_string()
    );

    // Dropping 40 of 46 synced records is over 20%: refused, nothing sent.
    let (calls, _) = s.stats();
    model(&dir, "scores", &without_theirs[..6].to_vec());
    let e = sync(&dir, "scores", SyncOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_delete_pct"), "{e}");
    assert_eq!(s.stats().0, calls + 1, "only the properties check");
    // An empty model is refused too.
    model(&dir, "scores", &vec![]);
    let e = sync(&dir, "scores", SyncOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    // It says how many records this sync created it would archive.
    assert!(
        e.to_string().contains("every record this sync created (")
            && !e.to_string().contains("(0)"),
        "{e}"
    );
    assert_eq!(crm(&s, "contacts", "email").len(), 47);
    // Unless the user says so.
    model(&dir, "scores", &without_theirs[..6].to_vec());
    let r = sync(
        &dir,
        "scores",
        SyncOptions {
            allow_mass_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.counts.archived, 40, "{r:?}");
    assert_eq!(crm(&s, "contacts", "email").len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_and_writes_nothing() {
    let s = sim(SimConfig::default()).await;
    plant(
        &s,
        "contacts",
        &[("email", "person1@example.com"), ("ferry_lead_score", "3")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let mut data = rows(10, "a");
    data.push((None, some("1"), None));
    data.push((some("person2@example.com"), some("5"), None));
    model(&dir, "scores", &data);
    let r = sync(
        &dir,
        "scores",
        SyncOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // person2 appears twice: both rejected, with the empty key.
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (8, 1, 3),
        "{r:?}"
    );
    let sample = r
        .samples
        .iter()
        .find(|x| x.key == "person1@example.com")
        .expect("a sample of the update");
    assert_eq!(sample.action, "update");
    assert_eq!(sample.before["ferry_lead_score"], "3");
    assert_eq!(sample.after["ferry_lead_score"], "7");
    assert_eq!(s.records("contacts").len(), 1, "nothing written to the CRM");
    assert!(
        !dir.join("lake/_ferry/sync_log").exists(),
        "nothing written to the lake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_resends_only_failed_rows() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let data = rows(20, "a");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.created, 20);

    // HubSpot rejects row 0's value.
    let mut changed = data.clone();
    changed[0].1 = some("bad number");
    changed[1].1 = some("11");
    model(&dir, "scores", &changed);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.updated, r.counts.rejected), (1, 1), "{r:?}");

    // Fixed, while row 2 also changed: --retry-failed sends row 0 only.
    changed[0].1 = some("10");
    changed[2].1 = some("12");
    model(&dir, "scores", &changed);
    let r = sync(
        &dir,
        "scores",
        SyncOptions {
            retry_failed: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((r.counts.updated, r.api_calls), (1, 2), "{r:?}");
    let state = crm(&s, "contacts", "email");
    assert_eq!(state["person0@example.com"]["ferry_lead_score"], "10");
    assert_eq!(
        state["person2@example.com"]["ferry_lead_score"], "14",
        "not retried: it never failed"
    );
    // A normal run sends the rest.
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.updated, 1);
    assert_matches(&s, &changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_unique_key_is_looked_up_and_never_duplicated() {
    let s = sim(SimConfig::default()).await;
    define(&s, "companies", "ferry_fit", "string", false);
    plant(&s, "companies", &[("domain", "acme.com"), ("name", "Acme")]);
    plant(
        &s,
        "companies",
        &[("domain", "twin.io"), ("name", "Twin A")],
    );
    plant(
        &s,
        "companies",
        &[("domain", "twin.io"), ("name", "Twin B")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let toml = sync_toml(
        "accounts",
        "accounts",
        "companies",
        "upsert",
        ("domain", "domain"),
        "fit = \"ferry_fit\"",
        "",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    std::fs::write(
        dir.join("models/accounts.sql"),
        "{{ config(materialized='view') }}\nselect column1 as domain, column2 as fit from (values \
         ('ACME.com', 'A'), ('twin.io', 'B'), ('new.dev', 'C'))",
    )
    .unwrap();
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (1, 1, 1),
        "{r:?}"
    );
    let companies = s.records("companies");
    assert_eq!(companies.len(), 4);
    let fit = |d: &str| {
        companies
            .iter()
            .filter(|c| c.properties.get("domain").map(String::as_str) == Some(d))
            .map(|c| c.properties.get("ferry_fit").cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(fit("acme.com"), vec!["A"]);
    assert_eq!(fit("new.dev"), vec!["C"]);
    assert_eq!(
        fit("twin.io"),
        vec!["", ""],
        "ambiguous matches are rejected, not guessed"
    );
    let log = query(
        &dir,
        "select error_category from ferry.sync_log where status = 'rejected'",
    )
    .await;
    assert_eq!(log, vec![vec!["AMBIGUOUS_MATCH".to_string()]]);
    // Running again creates nothing new.
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.created, 0);
    assert_eq!(s.records("companies").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_sync_never_overlap() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    model(&dir, "scores", &rows(5, "a"));
    // A live holder on another machine, its lease not expired.
    let lease = format!(
        "{{\"holder\": \"other\", \"host\": \"elsewhere\", \"boot\": \"b\", \"pid\": {}, \"generation\": 4, \
         \"expires_at_ms\": {}, \"released\": false, \"since\": \"now\"}}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis() + 600_000
    );
    std::fs::create_dir_all(dir.join("lake/_ferry/sync_state/scores")).unwrap();
    std::fs::write(dir.join("lake/_ferry/sync_state/scores/lease"), lease).unwrap();
    let e = sync(&dir, "scores", SyncOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already running"), "{e}");
    assert!(s.records("contacts").is_empty());
    let r = sync(
        &dir,
        "scores",
        SyncOptions {
            break_lock: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.counts.created, 5);
    let held: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("lake/_ferry/sync_state/scores/lease")).unwrap(),
    )
    .unwrap();
    assert_eq!(held["released"], true, "released at the end: {held}");
    assert_eq!(held["generation"], 5, "a takeover moves the generation on");
    // Released: the next run takes it at once.
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.unchanged, 5);
}

/// Two `ferry sync` processes started together on one lake: exactly one
/// writes; the other refuses at once, naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_sync_processes_only_one_writes() {
    let s = sim(SimConfig {
        faults: Faults {
            slow: 1.0,
            slow_ms: 200,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    model(&dir, "scores", &rows(50, "a"));
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .args(["sync", "scores"])
            .env_remove("FERRY_LAKE")
            .output()
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(spawn);
        let b = sc.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "a: {:?}\nb: {:?}", a, b);
    let loser = if a.status.success() { &b } else { &a };
    assert!(
        String::from_utf8_lossy(&loser.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&loser.stderr)
    );
    let runs = query(
        &dir,
        "select count(distinct run_id) from ferry.sync_log where status = 'ok'",
    )
    .await;
    assert_eq!(runs, vec![vec!["1".to_string()]], "both runs wrote");
    assert_eq!(crm(&s, "contacts", "email").len(), 50);
}

/// The real binary, killed with SIGKILL at random moments 20 times, then run
/// to completion: the CRM ends up exactly as the model says, without a
/// duplicate record, and no create is confirmed twice. Companies match on
/// `domain`, which HubSpot does not keep unique, so this also exercises
/// look-before-create after lost replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_then_resume_converges() {
    use rand::Rng;
    // HubSpot as it is: search lags writes (1 s), some connections drop,
    // and some writes are applied but their reply is lost (504 after write).
    let s = sim(SimConfig {
        faults: Faults {
            slow: 0.5,
            slow_ms: 60,
            dropped: 0.02,
            lost_after_write: 0.03,
            ..Faults::default()
        },
        ten_secondly: 100_000,
        ..SimConfig::default()
    })
    .await;
    define(&s, "companies", "ferry_fit", "string", false);
    // Records that exist before the first run: matched, not duplicated.
    for i in (0..300).step_by(10) {
        plant(
            &s,
            "companies",
            &[("domain", &format!("co{i}.example")), ("name", "planted")],
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let toml = sync_toml(
        "accounts",
        "accounts",
        "companies",
        "upsert",
        ("domain", "domain"),
        "fit = \"ferry_fit\"\ntier = \"name\"",
        "batch_size = 20",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    let write_model = |salt: &str| {
        let values: Vec<String> = (0..300)
            .map(|i| format!("('co{i}.example', '{salt}-{}', 'tier-{}')", i % 7, i % 3))
            .collect();
        std::fs::write(
            dir.join("models/accounts.sql"),
            format!(
                "{{{{ config(materialized='view') }}}}\nselect column1 as domain, column2 as fit, column3 as tier from (values {})\n",
                values.join(", ")
            ),
        )
        .unwrap();
    };
    write_model("v1");
    let run = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(dir)
            .args(["sync", "accounts"])
            .env_remove("FERRY_LAKE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = rand::rng();
    let mut killed = 0;
    let mut finished_early = 0;
    let mut salt = String::new();
    let mut round = 0;
    while killed < 20 {
        // A new model version every few runs: runs have work to do, and the
        // end state must be the last version.
        if round % 3 == 0 {
            salt = format!("v{round}");
            write_model(&salt);
        }
        round += 1;
        let mut child = run(&dir);
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(50..1500))).await;
        match child.try_wait().unwrap() {
            Some(_) => finished_early += 1,
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed += 1;
            }
        }
        assert!(finished_early < 40, "runs finish too fast to be killed");
    }
    // The faults stop; runs go on until one ends clean (writes whose fate
    // was unknown wait for the search to catch up, then are settled).
    s.set_faults(Faults::default());
    let mut done = false;
    for _ in 0..10 {
        let status = run(&dir).wait().unwrap();
        if status.success() {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(done, "ferry sync never finished after the kills");

    let companies = s.records("companies");
    let mut by_domain: BTreeMap<String, Vec<&hubspot::Record>> = BTreeMap::new();
    for c in &companies {
        by_domain
            .entry(c.properties["domain"].clone())
            .or_default()
            .push(c);
    }
    assert_eq!(by_domain.len(), 300);
    for (domain, records) in &by_domain {
        assert_eq!(records.len(), 1, "duplicate records for {domain}");
        let i: usize = domain
            .trim_start_matches("co")
            .trim_end_matches(".example")
            .parse()
            .unwrap();
        assert_eq!(
            records[0].properties["ferry_fit"],
            format!("{salt}-{}", i % 7),
            "{domain}"
        );
        assert_eq!(
            records[0].properties["name"],
            format!("tier-{}", i % 3),
            "{domain}"
        );
    }
    let twice = query(
        &dir,
        "select key from ferry.sync_log where operation = 'create' and status = 'ok' group by key having count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "creates confirmed twice: {twice:?}");
    // Kills landed after some batches were committed (runs with log rows
    // but no summary), so resuming was really exercised.
    let interrupted = query(
        &dir,
        "select count(distinct run_id) from ferry.sync_log where run_id not in (select run_id from ferry.sync_runs)",
    )
    .await;
    let interrupted: u32 = interrupted[0][0].parse().unwrap();
    assert!(
        interrupted >= 3,
        "only {interrupted} killed runs had committed batches"
    );
    // A last run finds nothing to do.
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (0, 0, 300)
    );
}

fn parse(text: &str) -> ferry::Result<Project> {
    let secrets = ferry::project::SecretSource::new(
        [("HUBSPOT_TOKEN".to_string(), "pat-secret".to_string())]
            .into_iter()
            .collect(),
    );
    Project::parse(
        Path::new("p"),
        Path::new("p/ferry.toml"),
        text,
        &secrets,
        None,
    )
}

/// The README's sync configuration parses as documented, and mistakes in it
/// are caught before any call, naming the line and key.
#[test]
fn readme_sync_example_parses_and_mistakes_are_located() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("[syncs."))
        .expect("a sync example in README.md");
    let text = format!("[project]\nname = \"readme\"\n\n{block}");
    let p = parse(&text).unwrap();
    let s = &p.syncs["contact_scores"];
    assert_eq!(
        (s.object.as_str(), s.key_property.as_str(), s.batch_size),
        ("contacts", "email", 100)
    );
    let policies: Vec<(&str, &str)> = s
        .fields
        .iter()
        .map(|f| (f.property.as_str(), f.policy.as_str()))
        .collect();
    assert_eq!(
        policies,
        vec![
            ("ferry_lead_score", "overwrite"),
            ("ferry_mql_date", "skip_nulls"),
            ("ferry_persona", "if_empty")
        ]
    );
    let d = &p.destinations["hubspot"];
    assert_eq!((d.requests_per_10s, d.daily_limit), (100, 250_000));
    assert!(
        !format!("{d:?}").contains("pat-secret"),
        "the token never prints"
    );

    let e = parse(&text.replace("destination = \"hubspot\"", "destination = \"hubspt\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("destination \"hubspt\" is not defined") && e.contains("p/ferry.toml:"),
        "{e}"
    );
    let e = parse(&text.replace("batch_size = 100 ", "batch_size = 500 "))
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch_size = 500 is out of range"), "{e}");
    let e = parse(&text.replace("batch_size = 100 ", "workers = 0\nbatch_size = 100 "))
        .unwrap_err()
        .to_string();
    assert!(e.contains("workers = 0 is out of range: 1 to 64"), "{e}");
    let e = parse(&text.replace("mode = \"upsert\"", "mode = \"upsrt\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("syncs.contact_scores.mode") || e.contains("upsrt"),
        "{e}"
    );
    let e = parse(&text.replace("max_delete_pct", "max_delete_percent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `max_delete_percent`"), "{e}");
    let e = parse(&text.replace("token = \"${HUBSPOT_TOKEN}\"", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no credentials"), "{e}");
}

/// `if_empty` judged from a fresh lake copy of the CRM reads nothing from
/// HubSpot; a stale copy falls back to batch reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_empty_uses_a_fresh_lake_copy_of_the_crm() {
    use ferry::lake::{Lander, RunId, StreamRef};
    let s = sim(SimConfig::default()).await;
    let ann = plant(
        &s,
        "contacts",
        &[
            ("email", "ann@example.com"),
            ("ferry_persona", "Rep's call"),
        ],
    );
    let bob = plant(&s, "contacts", &[("email", "bob@example.com")]);
    let tmp = tempfile::tempdir().unwrap();
    let toml = sync_toml(
        "scores",
        "scores",
        "contacts",
        "upsert",
        ("email", "email"),
        "lead_score = \"ferry_lead_score\"\npersona = { property = \"ferry_persona\", policy = \"if_empty\" }",
        "crm_copy = { table = \"hubspot.contacts\", max_age_minutes = 60 }",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    // The extracted copy, as the HubSpot extractor lands it.
    let project_ = Project::load(&dir).unwrap();
    let lake = Lake::open(&project_.lake, &project_.dir).unwrap();
    let copy = vec![
        Ok(
            serde_json::json!({"id": ann.to_string(), "email": "ann@example.com", "ferry_persona": "Rep's call"}),
        ),
        Ok(
            serde_json::json!({"id": bob.to_string(), "email": "bob@example.com", "ferry_persona": null}),
        ),
    ];
    Lander::new(lake, RunId::new())
        .land_json(
            &StreamRef::new("hubspot", "contacts").unwrap(),
            Default::default(),
            copy,
        )
        .await
        .unwrap();
    let mut data: Rows = vec![
        (
            some("ann@example.com"),
            some("10"),
            some("Marketing Leader"),
        ),
        (some("bob@example.com"), some("20"), some("Sales Leader")),
    ];
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.updated, 2, "{r:?}");
    assert_eq!(
        r.api_calls, 2,
        "properties check + one upsert; no batch read"
    );
    let state = crm(&s, "contacts", "email");
    assert_eq!(state["ann@example.com"]["ferry_persona"], "Rep's call");
    assert_eq!(state["bob@example.com"]["ferry_persona"], "Sales Leader");

    // Regression: keys the fresh copy lacks were read from HubSpot in batch
    // reads, half of a large sync's calls. They are new since the copy was
    // extracted: the upsert creates them, with their if_empty fields.
    for i in 0..150 {
        data.push((some(&format!("new{i}@example.com")), some("5"), some("Ops")));
    }
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.created, 150, "{r:?}");
    assert_eq!(
        r.api_calls, 3,
        "properties check + two upserts; no batch read: {r:?}"
    );
    assert_eq!(
        crm(&s, "contacts", "email")["new7@example.com"]["ferry_persona"],
        "Ops"
    );
    data.truncate(2);
    model(&dir, "scores", &data);

    // A stale copy (max age 0) is not trusted: HubSpot is read in a batch.
    let text = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        text.replace("max_age_minutes = 60", "max_age_minutes = 0"),
    )
    .unwrap();
    data[0].1 = some("11");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.updated, r.api_calls), (1, 3), "{r:?}");
    assert_eq!(
        crm(&s, "contacts", "email")["ann@example.com"]["ferry_persona"],
        "Rep's call"
    );
}

/// `ferry sync` from the command line: the dry run's report, then the real
/// run's summary and exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dry_run_then_sync() {
    let s = sim(SimConfig::default()).await;
    plant(
        &s,
        "contacts",
        &[("email", "person1@example.com"), ("ferry_lead_score", "3")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    model(&dir, "scores", &rows(3, "a"));
    let ferry = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .args(args)
            .env_remove("FERRY_LAKE")
            .output()
            .unwrap()
    };
    let out = ferry(&["sync", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("dry run (nothing written)"), "{text}");
    assert!(
        text.contains("would be created 2  would be updated 1"),
        "{text}"
    );
    assert!(
        text.contains("sample update person1@example.com:"),
        "{text}"
    );
    assert!(text.contains("ferry_lead_score: \"3\" -> \"7\""), "{text}");
    assert_eq!(s.records("contacts").len(), 1);

    let out = ferry(&["sync", "scores"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("created 2  updated 1  archived 0  unchanged 0  rejected 0  failed 0"),
        "{text}"
    );
    assert!(text.contains("API calls 2  rate limited (429) 0"), "{text}");
    assert_matches(&s, &rows(3, "a"));

    let out = ferry(&["sync", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sync named \"nope\""));
}

/// The daily budget running out stops the run cleanly (confirmed batches
/// kept, the rest not sent); the next day's run sends only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_limit_stops_cleanly_and_resumes() {
    let s = sim(SimConfig {
        daily: 3,
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let t = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        t.replace(
            "timeout_seconds = 5\n",
            "timeout_seconds = 5\nmax_in_flight = 1\n",
        ),
    )
    .unwrap();
    let data = rows(300, "a");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.not_sent), (200, 100), "{r:?}");
    assert!(
        r.stopped.as_deref().is_some_and(|m| m.contains("daily")),
        "{r:?}"
    );
    assert_eq!(crm(&s, "contacts", "email").len(), 200);

    s.reset_daily();
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.unchanged, r.api_calls),
        (100, 200, 2),
        "{r:?}"
    );
    assert_matches(&s, &data);
}

/// Paced by the account's budget, a sync larger than one window sees no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_sync_stays_under_the_limit() {
    let s = sim(SimConfig {
        ten_secondly: 8,
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    let t = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        t.replace(
            "type = \"hubspot\"\n",
            "type = \"hubspot\"\nrequests_per_10s = 8\n",
        ),
    )
    .unwrap();
    let data = rows(1200, "a");
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.api_calls, r.rate_limited),
        (1200, 13, 0),
        "{r:?}"
    );
    assert_eq!(s.stats().1, 0, "the emulator refused nothing");
    assert_matches(&s, &data);
}

/// `ferry build` runs the route and refuses to sync when an error-severity
/// test fails: bad data never reaches the CRM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_refuses_to_sync_after_a_failing_test() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), SCORES);
    std::fs::write(
        dir.join("models/schema.yml"),
        "version: 2\nmodels:\n  - name: scores\n    columns:\n      - name: lead_score\n        data_tests: [not_null]\n",
    )
    .unwrap();
    let mut data = rows(5, "a");
    data[2].1 = None;
    model(&dir, "scores", &data);
    let build = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .arg("build")
            .env_remove("FERRY_LAKE")
            .output()
            .unwrap()
    };
    let out = build();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    // The model's tests run as soon as it is built: the failure fails it
    // in the run stage, and the sync is skipped.
    assert!(
        text.contains("built, but its tests failed")
            && text.contains("sync skipped: the run stage failed"),
        "{text}"
    );
    assert!(s.records("contacts").is_empty(), "nothing reached the CRM");

    data[2].1 = some("42");
    model(&dir, "scores", &data);
    let out = build();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("scores: created 5"), "{text}");
    assert_matches(&s, &data);
    let runs = query(
        &dir,
        "select status from ferry.runs where command = 'build' order by started_at",
    )
    .await;
    assert_eq!(
        runs,
        vec![vec!["error".to_string()], vec!["success".to_string()]]
    );
}

/// `ferry compile` checks syncs against the models they read: a mapped
/// column the model lacks fails there, naming the sync and the nearest
/// column, before any extract or network call (the destination's URL
/// here answers nothing). `ferry sync` fails the same way, calling nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_catches_a_sync_mapping_a_missing_column() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        "http://127.0.0.1:9",
        &SCORES.replace(
            "persona = \"ferry_persona\"",
            "personna = \"ferry_persona\"",
        ),
    );
    model(&dir, "scores", &rows(3, "a"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(&dir)
        .arg("compile")
        .env_remove("FERRY_LAKE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("sync scores: model scores has no column \"personna\"")
            && said.contains("did you mean persona?")
            && said.contains("[syncs.scores]"),
        "{said}"
    );
    let e = sync(&dir, "scores", SyncOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no column \"personna\""), "{e}");

    // Fixed, compile says the sync was checked.
    std::fs::write(
        dir.join("ferry.toml"),
        std::fs::read_to_string(dir.join("ferry.toml"))
            .unwrap()
            .replace("personna", "persona"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(&dir)
        .arg("compile")
        .env_remove("FERRY_LAKE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("compiled 1 model in")
            && said.contains("and 1 sync map only columns their models have"),
        "{said}"
    );
}

/// `workers = 4`: the keys split into four partitions sent on four threads
/// under the account's one budget, while the emulator loses some replies
/// after applying the write and the run is stopped partway (SIGTERM's
/// path). Every row reaches the CRM once, no call is answered 429, the log
/// confirms each key once, and a final run sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_send_each_row_once_within_the_accounts_budget() {
    let s = sim(SimConfig {
        ten_secondly: 30,
        faults: Faults {
            lost_after_write: 0.05,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let scores = SCORES.replace(
        "[syncs.scores.fields]",
        "batch_size = 20\nworkers = 4\n\n[syncs.scores.fields]",
    );
    let dir = project(tmp.path(), &s.base_url(), &scores);
    let text = std::fs::read_to_string(dir.join("ferry.toml"))
        .unwrap()
        .replace(
            "type = \"hubspot\"\n",
            "type = \"hubspot\"\nrequests_per_10s = 30\n",
        );
    std::fs::write(dir.join("ferry.toml"), text).unwrap();
    model(&dir, "scores", &rows(1200, "a"));

    // Stopped after 4 s: the first window's 30 calls and a few more.
    let (stop, rx) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        let _ = stop.send(true);
    });
    let first = sync(
        &dir,
        "scores",
        SyncOptions {
            shutdown: Some(rx),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    stopper.await.unwrap();
    let sent_first = first.counts.created + first.counts.failed;
    assert!(
        first.counts.created > 0 && first.counts.created < 1200,
        "the stop came partway: {:?}",
        first.counts
    );
    let rest = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert!(rest.stopped.is_none(), "{rest:?}");
    // `crm` panics on a duplicate email.
    let held = crm(&s, "contacts", "email");
    assert_eq!(
        held.len(),
        1200,
        "after {sent_first} then {:?}",
        rest.counts
    );
    assert!(held.values().all(|p| p.contains_key("ferry_lead_score")));
    let (calls, limited) = s.stats();
    assert_eq!(limited, 0, "{limited} of {calls} calls were answered 429");
    let confirmed = query(
        &dir,
        "select count(*), count(distinct key) from ferry.sync_log where status = 'ok'",
    )
    .await;
    assert_eq!(confirmed[0], vec!["1200", "1200"]);
    // A run straight after: its limiter starts from the last one's window
    // (HubSpot's still holds the last run's calls), so even its check is
    // not answered 429.
    let again = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (
            again.counts.created,
            again.counts.updated,
            again.counts.unchanged
        ),
        (0, 0, 1200),
        "a run after everything was confirmed sends nothing: {again:?}"
    );
    assert_eq!(
        (again.api_calls, again.rate_limited),
        (1, 0),
        "only the check, within the budget: {again:?}"
    );
}
