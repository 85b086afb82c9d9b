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
pub fn crm(s: &RunningSim, kind: &str, property: &str) -> BTreeMap<String, BTreeMap<String, String>> {
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
    std::fs::write(dir.join("secrets.toml"), format!("HS_TOKEN = \"{TOKEN}\"\n")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "synctest"

[destinations.hubspot]
type = "hubspot"
url = "{sim_url}"
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
        want.insert(r.0.clone().unwrap().to_lowercase(), (r.1.clone(), r.2.clone()));
    }
    let got: BTreeMap<String, (Option<String>, Option<String>)> = state
        .iter()
        .map(|(k, p)| {
            (
                k.clone(),
                (p.get("ferry_lead_score").cloned(), p.get("ferry_persona").cloned()),
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
    assert_eq!((r.counts.created, r.counts.updated, r.counts.unchanged), (250, 0, 0));
    // One properties check + three batches of at most 100.
    assert_eq!(r.api_calls, 4, "{r:?}");
    assert_matches(&s, &data);

    // Nothing changed: nothing is sent.
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.updated, r.counts.unchanged), (0, 0, 250));
    assert_eq!(r.api_calls, 1);

    // Three rows change: one batch carries exactly those three.
    for i in [3, 77, 201] {
        data[i].1 = Some("99".into());
    }
    data[5].2 = None; // overwrite policy: a null clears the CRM value
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.updated, r.counts.unchanged), (0, 4, 246));
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
    assert_eq!(log, vec![vec!["upsert".to_string(), "ok".into(), "4".into()]]);
    let runs = query(&dir, "select count(*), sum(created), sum(updated) from ferry.sync_runs").await;
    assert_eq!(runs, vec![vec!["3".to_string(), "250".into(), "4".into()]]);
}
