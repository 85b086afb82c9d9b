//! Vendors as they really behave: lagging search indexes, normalized keys,
//! replies lost after the write, unreadable bodies, redirects, and APIs that
//! ignore or clamp their paging parameters. Each test pins one failure that
//! ferry had against a kinder emulator (the names say which).

use std::path::Path;

use ferry::sim::hubspot::{Faults, SimConfig};
use ferry::sync::SyncOptions;

use crate::sync::{crm, define, model, plant, project, query, rows, sim, sync, sync_toml};

fn companies_model(dir: &Path, domains: &[(&str, &str)]) {
    let values: Vec<String> = domains
        .iter()
        .map(|(d, f)| format!("('{d}', '{f}')"))
        .collect();
    std::fs::write(
        dir.join("models/accounts.sql"),
        format!(
            "{{{{ config(materialized='view') }}}}\nselect column1 as domain, column2 as fit from (values {})\n",
            values.join(", ")
        ),
    )
    .unwrap();
}

fn accounts_toml(mode: &str) -> String {
    sync_toml(
        "accounts",
        "accounts",
        "companies",
        mode,
        ("domain", "domain"),
        "fit = \"ferry_fit\"",
        "",
    )
}

/// A create by a non-unique key (company domain) whose reply is lost after
/// HubSpot wrote it: ferry used to look the key up at once, HubSpot's
/// lagging search did not show the record yet, and ferry created it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_lookup_fails_is_not_sent_again() {
    let s = sim(SimConfig::default()).await;
    define(&s, "companies", "ferry_fit", "string", false);
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), &accounts_toml("upsert"));
    let domains: Vec<(String, String)> = (0..30)
        .map(|i| (format!("new{i}.dev"), format!("fit{i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = domains
        .iter()
        .map(|(d, f)| (d.as_str(), f.as_str()))
        .collect();
    companies_model(&dir, &pairs);
    // Every write is applied, and every reply is lost.
    s.set_faults(Faults {
        lost_after_write: 1.0,
        ..Faults::default()
    });
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.unknown, 30, "{r:?}");
    assert_eq!(s.records("companies").len(), 30, "each create sent once");
    s.set_faults(Faults::default());
    // At once: the search may not show them yet, so nothing is written.
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.created, 0, "{r:?}");
    assert_eq!(s.records("companies").len(), 30);
    // Once the search has caught up: found, confirmed, created by this sync.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((r.counts.unknown, r.counts.failed), (0, 0), "{r:?}");
    assert_eq!(s.records("companies").len(), 30, "no duplicates");
    let ours = query(
        &dir,
        "select count(distinct key) from ferry.sync_log where status = 'ok' and created",
    )
    .await;
    assert_eq!(ours, vec![vec!["30".to_string()]]);
    let r = sync(&dir, "accounts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((r.counts.created, r.counts.unchanged), (0, 30));
}

/// A lookup answered `200` with an HTML page used to count as "no records":
/// ferry created duplicates and, under `if_empty`, overwrote reps' values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lookup_creates_and_overwrites_nothing() {
    let s = sim(SimConfig::default()).await;
    for i in 0..5 {
        plant(
            &s,
            "contacts",
            &[
                ("email", &format!("person{i}@example.com")),
                ("ferry_persona", "set by a rep"),
            ],
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let toml = crate::sync::SCORES.replace(
        "persona = \"ferry_persona\"",
        "persona = { property = \"ferry_persona\", policy = \"if_empty\" }",
    );
    let dir = project(tmp.path(), &s.base_url(), &toml);
    model(&dir, "scores", &rows(5, "model"));
    s.set_faults(Faults {
        garbled: 1.0,
        ..Faults::default()
    });
    let dry = sync(
        &dir,
        "scores",
        SyncOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.counts.created, 0, "a dry run guessed creates: {dry:?}");
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.failed), (0, 5), "{r:?}");
    let state = crm(&s, "contacts", "email");
    assert_eq!(state.len(), 5, "nothing created");
    for p in state.values() {
        assert_eq!(p["ferry_persona"], "set by a rep", "nothing overwritten");
    }
    s.set_faults(Faults::default());
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.updated), (0, 5), "{r:?}");
    for p in crm(&s, "contacts", "email").values() {
        assert_eq!(p["ferry_persona"], "set by a rep");
    }
}

/// HubSpot lower-cases emails and need not echo `idProperty`: matching
/// replies by the sent key turned successes into "no result" retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_crm_normalizes_still_match_their_replies() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), crate::sync::SCORES);
    let mut data = rows(120, "a");
    for r in &mut data {
        r.0 = r.0.as_ref().map(|e| format!(" {}", e.to_uppercase()));
    }
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.failed, r.counts.unknown),
        (120, 0, 0),
        "{r:?}"
    );
    assert_eq!(crm(&s, "contacts", "email").len(), 120);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.unchanged, r.api_calls), (120, 1), "{r:?}");
}

/// An upsert whose first reply was lost and whose retry answered
/// `new: false` was logged as not created, so `mirror` never archived it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_by_a_lost_upsert_is_still_this_syncs() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let toml = crate::sync::SCORES.replace("mode = \"upsert\"", "mode = \"mirror\"");
    let dir = project(tmp.path(), &s.base_url(), &toml);
    model(&dir, "scores", &rows(40, "a"));
    s.lose_next_writes(1);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!(r.counts.failed + r.counts.unknown, 0, "{r:?}");
    assert_eq!(crm(&s, "contacts", "email").len(), 40);
    // The model keeps 10 of them: mirror archives the other 30.
    model(&dir, "scores", &rows(10, "a"));
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
    assert_eq!(r.counts.archived, 30, "{r:?}");
    assert_eq!(crm(&s, "contacts", "email").len(), 10);
}

/// Every row invalid: ferry bisected each batch down to single rows, about
/// two calls per row. HubSpot reports each bad input on its own when the
/// inputs carry `objectWriteTraceId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_refused_without_bisecting_the_batch() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), crate::sync::SCORES);
    let mut data = rows(200, "a");
    for (i, r) in data.iter_mut().enumerate() {
        if i % 2 == 0 {
            r.1 = Some("not a number".into());
        }
    }
    model(&dir, "scores", &data);
    let r = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.rejected), (100, 100), "{r:?}");
    // One properties check and one call per batch of 100.
    assert_eq!(r.api_calls, 3, "{r:?}");
}

/// HubSpot's search shows a write only after its index catches up: a
/// window that ended at "now" skipped a contact changed just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_lag_does_not_skip_records_modified_at_the_window_edge() {
    let s = ferry::sim::hubspot::start(
        SimConfig {
            search_lag: std::time::Duration::from_millis(800),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let id = plant(&s, "contacts", &[("email", "edge@example.com")]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "[project]\nname = \"edge\"\n\n[sources.hubspot]\ntype = \"hubspot\"\nurl = \"{}\"\ntoken = \"ferry-sim-token\"\n\
             search_lag_margin_seconds = 1\n\n[sources.hubspot.streams.contacts]\nproperties = [\"email\", \"jobtitle\"]\n",
            s.base_url()
        ),
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    crate::extract::extract(dir, &[]).await.unwrap();
    // Changed through the API: search lags it by 0.8 s.
    let client = reqwest::Client::new();
    let reply = client
        .post(format!("{}/crm/v3/objects/contacts/batch/update", s.base_url()))
        .bearer_auth("ferry-sim-token")
        .json(&serde_json::json!({"inputs": [{"id": id.to_string(), "properties": {"jobtitle": "CFO"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    crate::extract::extract(dir, &[]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    crate::extract::extract(dir, &[]).await.unwrap();
    let titles = query(
        dir,
        "select jobtitle from hubspot.contacts where jobtitle is not null",
    )
    .await;
    assert_eq!(
        titles,
        vec![vec!["CFO".to_string()]],
        "the change was skipped"
    );
}

/// HubSpot lists archived records only with `archived=true`: a contact
/// deleted in HubSpot stayed live in the lake for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_archived_in_hubspot_land_as_archived() {
    let s = ferry::sim::hubspot::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let id = plant(&s, "contacts", &[("email", "gone@example.com")]);
    plant(&s, "contacts", &[("email", "stays@example.com")]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "[project]\nname = \"arch\"\n\n[sources.hubspot]\ntype = \"hubspot\"\nurl = \"{}\"\ntoken = \"ferry-sim-token\"\n\
             search_lag_margin_seconds = 0\n\n[sources.hubspot.streams.contacts]\nproperties = [\"email\"]\n",
            s.base_url()
        ),
    )
    .unwrap();
    crate::extract::extract(dir, &[]).await.unwrap();
    s.with_crm(|crm| {
        crm.types.get_mut("contacts").unwrap().modify(id, |r| {
            r.archived = true;
            r.updated_at = chrono::Utc::now();
        });
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    crate::extract::extract(dir, &[]).await.unwrap();
    let latest = query(
        dir,
        "select email, archived from (select email, archived, row_number() over (partition by id order by _ferry_loaded_at desc) as rn from hubspot.contacts) where rn = 1 order by email",
    )
    .await;
    assert_eq!(
        latest,
        vec![
            vec!["gone@example.com".to_string(), "true".to_string()],
            vec!["stays@example.com".to_string(), "false".to_string()],
        ]
    );
}

/// A 307 from the vendor would replay a POST of contact data, with its
/// credentials, to whatever host it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_another_host_are_not_followed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let hits = Arc::new(AtomicU64::new(0));
    let counted = hits.clone();
    let elsewhere = axum::Router::new().fallback(move || {
        let c = counted.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            "stolen"
        }
    });
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(other, elsewhere).await.unwrap() });
    let target = other_url.clone();
    let vendor = axum::Router::new().fallback(move || {
        let to = format!("{target}/steal");
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", to)],
                "",
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, vendor).await.unwrap() });
    let client = ferry::http::Client::new(
        &base,
        ferry::http::Auth::Bearer(ferry::project::secret::Secret::new("secret-token")),
        ferry::sync::hubspot::VENDOR,
        std::sync::Arc::new(ferry::http::RateLimiter::new(
            100,
            std::time::Duration::from_secs(1),
            None,
        )),
        Default::default(),
    )
    .unwrap();
    let body = serde_json::json!({"inputs": [{"properties": {"email": "a@b.c"}}]});
    let e = client
        .send(ferry::http::Call::post(
            "/crm/v3/objects/contacts/batch/create",
            &body,
            false,
        ))
        .await
        .unwrap_err();
    assert!(e.message().contains("redirected"), "{}", e.message());
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the other host was called");
}

/// `ferry query "insert into ..."` wrote an unlogged Parquet file into
/// `raw/` outside its partitions, and `drop table` silently did nothing.
#[test]
fn ferry_query_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("p");
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["init", proj.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(init.status.success());
    let data = proj.join("data/contacts.jsonl");
    let landed = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(&proj)
        .args(["land", "crm.contacts", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(landed.status.success());
    let files = |p: &Path| walk(&p.join("lake"));
    let before = files(&proj);
    for sql in [
        "insert into crm.contacts (id) values (1)",
        "drop table crm.contacts",
        "create table t as select 1",
        "copy (select 1) to 'lake/raw/x.parquet'",
        "set datafusion.execution.batch_size = 1",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&proj)
            .args(["query", sql])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} was run");
        assert!(err.contains("reads only"), "{sql}: {err}");
    }
    assert_eq!(files(&proj), before, "the lake changed");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.sort();
    out
}
