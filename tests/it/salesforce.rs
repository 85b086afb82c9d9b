//! Reverse sync to Salesforce over real HTTP against the emulator
//! (`ferry::sim::salesforce`): sObject Collections, per-record errors in
//! the sync log, the JWT and refresh-token logins, a session that expires
//! mid-run, and the org's daily limit.

use std::path::{Path, PathBuf};

use ferry::sim::salesforce::{self, Check, FieldDef, Rule, RunningSim, SimConfig};
use ferry::sync::SyncOptions;

use super::sync::{query, sync};

const PUBLIC_KEY: &str = include_str!("../fixtures/salesforce/test_public_key.pem");

async fn sim(config: SimConfig) -> RunningSim {
    let mut config = config;
    config.app.public_key_pem = Some(PUBLIC_KEY.into());
    let s = salesforce::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    s.with_org(|org| {
        let contact = org.object_mut("Contact").unwrap();
        contact.define(FieldDef {
            external_id: true,
            unique: true,
            ..FieldDef::new("Ferry_Email__c", "email")
        });
        contact.rules.push(Rule {
            field: "Ferry_Lead_Score__c".into(),
            check: Check::AtMost(100.0),
            message: "Lead score cannot exceed 100".into(),
        });
    })
    .unwrap();
    s
}

/// A project whose sync `contacts` upserts the view model `people` to
/// Salesforce contacts by the external ID `Ferry_Email__c`; `login` is the
/// destination's credentials table.
fn project(dir: &Path, url: &str, login: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/salesforce/test_private_key.pem"
    ))
    .unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        format!("SF_KEY = '''{key}'''\nSF_REFRESH = \"ferry-sim-refresh\"\nSF_SECRET = \"ferry-sim-secret\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "sftest"

[destinations.sf]
type = "salesforce"
url = "{url}"
max_attempts = 6
backoff_initial_ms = 20
backoff_max_ms = 200
timeout_seconds = 5
{login}

[syncs.contacts]
model = "people"
destination = "sf"
object = "Contact"
mode = "upsert"
match = {{ column = "email", property = "Ferry_Email__c" }}

[syncs.contacts.fields]
last_name = "LastName"
lead_score = "Ferry_Lead_Score__c"
"#
        ),
    )
    .unwrap();
    dir.to_path_buf()
}

const REFRESH: &str = "[destinations.sf.oauth]\nclient_id = \"ferry-sim-client\"\nclient_secret = \"${SF_SECRET}\"\nrefresh_token = \"${SF_REFRESH}\"\n";
const JWT: &str = "[destinations.sf.jwt]\nclient_id = \"ferry-sim-client\"\nusername = \"ferry@example.com\"\nprivate_key = \"${SF_KEY}\"\n";

/// (email, last name, score)
type People = Vec<(String, String, String)>;

fn people(n: usize) -> People {
    (0..n)
        .map(|i| {
            (
                format!("person{i}@example.com"),
                format!("Person{i}"),
                format!("{}", i % 90),
            )
        })
        .collect()
}

fn model(dir: &Path, rows: &People) {
    let values: Vec<String> = rows
        .iter()
        .map(|(e, n, s)| {
            let n = if n.is_empty() {
                "null".to_string()
            } else {
                format!("'{n}'")
            };
            format!("('{e}', {n}, '{s}')")
        })
        .collect();
    std::fs::write(
        dir.join("models/people.sql"),
        format!(
            "{{{{ config(materialized='view') }}}}\nselect column1 as email, column2 as last_name, column3 as lead_score from (values {}) as v\n",
            values.join(",\n")
        ),
    )
    .unwrap();
}

/// The org's contacts by Ferry_Email__c: (LastName, score as text).
fn contacts(s: &RunningSim) -> std::collections::BTreeMap<String, (String, String)> {
    let mut out = std::collections::BTreeMap::new();
    for r in s.records("Contact") {
        let key = r.values["Ferry_Email__c"].as_str().unwrap().to_string();
        let score = r
            .values
            .get("Ferry_Lead_Score__c")
            .and_then(|v| v.as_f64())
            .unwrap_or(-1.0);
        let name = r.values["LastName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            out.insert(key.clone(), (name, format!("{score}")))
                .is_none(),
            "duplicate contact {key}"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_through_collections_with_per_record_errors_in_the_sync_log() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    let mut data = people(250);
    // One misses a required field, one breaks a validation rule.
    data[7].1 = String::new();
    data[8].2 = "150".into();
    model(&dir, &data);

    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((r.counts.created, r.counts.rejected), (248, 2), "{r:?}");
    // /limits and describe, then 200 + 50 records in two Collections calls.
    assert_eq!(r.api_calls, 4, "{r:?}");
    let org = contacts(&s);
    assert_eq!(org.len(), 248);
    assert_eq!(org["person3@example.com"], ("Person3".into(), "3".into()));
    let log = query(
        &dir,
        "select key, error_category, error_message from ferry.sync_log where status = 'rejected' order by key",
    )
    .await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0][0], "person7@example.com");
    assert_eq!(log[0][1], "REQUIRED_FIELD_MISSING");
    assert!(log[0][2].contains("LastName"), "{log:?}");
    assert_eq!(log[1][1], "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    assert!(
        log[1][2].contains("Lead score cannot exceed 100")
            && log[1][2].contains("Ferry_Lead_Score__c"),
        "{log:?}"
    );

    // Fixed rows and one change: only those are sent; the session expired
    // meanwhile, so ferry logs in again once and goes on.
    data[7].1 = "Seven".into();
    data[8].2 = "80".into();
    data[20].2 = "42".into();
    model(&dir, &data);
    s.expire_sessions();
    let (_, logins_before) = s.stats();
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (2, 1, 0),
        "{r:?}"
    );
    assert_eq!(s.stats().1, logins_before + 1);
    let org = contacts(&s);
    assert_eq!(org.len(), 250);
    assert_eq!(org["person20@example.com"].1, "42");
    assert_eq!(org["person8@example.com"].1, "80");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_login_finds_the_instance_and_a_bad_key_is_refused() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), JWT);
    model(&dir, &people(5));
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.created, 5, "{r:?}");
    assert_eq!(s.stats().1, 1, "one login");

    // An assertion signed by another key: refused at login, nothing sent.
    let other = tempfile::tempdir().unwrap();
    let dir2 = project(
        other.path(),
        &s.base_url(),
        &JWT.replace("ferry@example.com", "intruder@example.com"),
    );
    model(&dir2, &people(5));
    let calls = s.stats().0;
    let e = sync(&dir2, "contacts", SyncOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused the credentials") && e.contains("user hasn't approved"),
        "{e}"
    );
    assert_eq!(s.stats().0, calls, "no API call after a refused login");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orgs_daily_limit_stops_cleanly_and_the_rest_is_sent_later() {
    let s = sim(SimConfig {
        daily: 3,
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    model(&dir, &people(450));
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    let stopped = r.stopped.clone().unwrap_or_default();
    assert!(
        stopped.contains("REQUEST_LIMIT_EXCEEDED") || stopped.contains("daily API request limit"),
        "{r:?}"
    );
    assert_eq!(r.counts.created, 200, "{r:?}");
    assert_eq!(contacts(&s).len(), 200);
    // The next run reads /limits first: nothing left, so it stops before
    // sending anything, saying why.
    let e = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("daily API request limit is spent"), "{e}");
    assert_eq!(contacts(&s).len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_destination_refuses_hubspot_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), "http://127.0.0.1:9", "token = \"x\"");
    let e = ferry::project::Project::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("`token` is not a salesforce setting") && e.contains("[jwt]"),
        "{e}"
    );
}

/// 20% of calls fail (503s, dropped connections, writes applied whose
/// reply is lost): runs converge to the model, with no duplicate contact
/// (`contacts` asserts one per key) and every value as the model says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_faults_converge_without_duplicates() {
    let s = sim(SimConfig::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    // Leads match on Email, which is not an External ID: no upsert, so
    // ferry looks them up and creates the rest; a create whose reply is
    // lost must be found, not sent again.
    s.with_org(|org| {
        let lead = org.object_mut("Lead").unwrap();
        let mut company = lead.field("Company").unwrap().clone();
        company.required = false;
        lead.define(company);
    });
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[syncs.leads]\nmodel = \"people\"\ndestination = \"sf\"\nobject = \"Lead\"\nmode = \"upsert\"\n\
             match = {{ column = \"email\", property = \"Email\" }}\n\n[syncs.leads.fields]\nlast_name = \"LastName\"\nlead_score = \"Ferry_Lead_Score__c\"\n"
        ),
    )
    .unwrap();
    let mut data = people(600);
    model(&dir, &data);
    s.set_faults(salesforce::Faults {
        server_error: 0.08,
        dropped: 0.06,
        lost_after_write: 0.06,
        ..salesforce::Faults::default()
    });
    for round in 0..12 {
        if round == 6 {
            for (i, row) in data.iter_mut().enumerate() {
                if i % 3 == 0 {
                    row.2 = format!("{}", (i % 50) + 1);
                }
            }
            model(&dir, &data);
        }
        let _ = sync(&dir, "contacts", SyncOptions::default()).await;
        let _ = sync(&dir, "leads", SyncOptions::default()).await;
    }
    s.set_faults(salesforce::Faults::default());
    for name in ["contacts", "leads"] {
        let r = sync(&dir, name, SyncOptions::default()).await.unwrap();
        assert!(r.clean(), "{r:?}");
    }
    let org = contacts(&s);
    assert_eq!(org.len(), 600);
    let mut leads = std::collections::BTreeMap::new();
    for r in s.records("Lead") {
        let email = r.values["Email"].as_str().unwrap().to_string();
        let score = r.values["Ferry_Lead_Score__c"].as_f64().unwrap();
        assert!(
            leads.insert(email.clone(), format!("{score}")).is_none(),
            "duplicate lead {email}"
        );
    }
    assert_eq!(leads.len(), 600);
    for (email, name, score) in &data {
        let got = &org[email];
        assert_eq!((&got.0, &got.1), (name, score), "{email}");
        assert_eq!(&leads[email], score, "{email}");
    }
}

/// The real binary, killed with SIGKILL at random moments 20 times while
/// it syncs leads matched on Email (not an External ID: lookups, then
/// creates, which are not idempotent), with dropped connections and lost
/// replies; then run to completion: every lead exactly once, with the
/// model's values, and no create confirmed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_then_resume_converges_on_salesforce() {
    use rand::Rng;
    let s = sim(SimConfig {
        faults: salesforce::Faults {
            slow: 0.5,
            slow_ms: 150,
            dropped: 0.02,
            lost_after_write: 0.03,
            ..salesforce::Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    s.with_org(|org| {
        let lead = org.object_mut("Lead").unwrap();
        let mut company = lead.field("Company").unwrap().clone();
        company.required = false;
        lead.define(company);
        // Leads that exist before the first run: matched, not duplicated.
        for i in (0..300).step_by(10) {
            let mut m = serde_json::Map::new();
            m.insert("Email".into(), format!("person{i}@example.com").into());
            m.insert("LastName".into(), "Planted".into());
            org.insert("Lead", &[m]).unwrap();
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    // Two calls in flight: runs last long enough to be killed mid-way.
    let toml = std::fs::read_to_string(dir.join("ferry.toml"))
        .unwrap()
        .replace("max_attempts = 6", "max_attempts = 6\nmax_in_flight = 2");
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[syncs.leads]\nmodel = \"people\"\ndestination = \"sf\"\nobject = \"Lead\"\nmode = \"upsert\"\nbatch_size = 20\n\
             match = {{ column = \"email\", property = \"Email\" }}\n\n[syncs.leads.fields]\nlast_name = \"LastName\"\nlead_score = \"Ferry_Lead_Score__c\"\n"
        ),
    )
    .unwrap();
    let write_model = |round: usize| {
        let rows: People = (0..300)
            .map(|i| {
                (
                    format!("person{i}@example.com"),
                    format!("Name{round}x{}", i % 7),
                    format!("{}", (i + round) % 90),
                )
            })
            .collect();
        model(&dir, &rows);
        rows
    };
    let mut data = write_model(0);
    let run = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(dir)
            .args(["sync", "leads"])
            .env_remove("FERRY_LAKE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = rand::rng();
    let (mut killed, mut finished_early, mut round) = (0, 0, 0);
    while killed < 20 {
        if round % 2 == 0 {
            data = write_model(round);
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
    s.set_faults(salesforce::Faults::default());
    let mut done = false;
    for _ in 0..10 {
        if run(&dir).wait().unwrap().success() {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(done, "ferry sync never finished after the kills");
    let mut leads = std::collections::BTreeMap::new();
    for r in s.records("Lead") {
        let email = r.values["Email"].as_str().unwrap().to_string();
        let name = r.values["LastName"].as_str().unwrap().to_string();
        let score = r.values["Ferry_Lead_Score__c"].as_f64().unwrap_or(-1.0);
        assert!(
            leads
                .insert(email.clone(), (name, format!("{score}")))
                .is_none(),
            "duplicate lead {email}"
        );
    }
    assert_eq!(leads.len(), 300);
    for (email, name, score) in &data {
        assert_eq!(leads[email], (name.clone(), score.clone()), "{email}");
    }
    let twice = query(
        &dir,
        "select key from ferry.sync_log where sync = 'leads' and operation = 'create' and status = 'ok' group by key having count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "creates confirmed twice: {twice:?}");
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
}

/// `--target sandbox` sends the sync to the sandbox org (its URL and its
/// own credentials), says so on its first line, and leaves prod alone;
/// a target with `require_clean_git` refuses to write from uncommitted
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_switches_urls_and_credentials_and_prod_wants_a_clean_tree() {
    let prod = sim(SimConfig::default()).await;
    let mut sandbox_config = SimConfig::default();
    sandbox_config.app.refresh_token = "sandbox-refresh".into();
    sandbox_config.app.client_id = "sandbox-client".into();
    let sandbox = sim(sandbox_config).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &prod.base_url(), REFRESH);
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[targets.sandbox.destinations.sf]\nurl = \"{}\"\n[targets.sandbox.destinations.sf.oauth]\n\
             client_id = \"sandbox-client\"\nclient_secret = \"${{SF_SECRET}}\"\nrefresh_token = \"sandbox-refresh\"\n\n\
             [targets.prod]\nrequire_clean_git = true\n",
            sandbox.base_url()
        ),
    )
    .unwrap();
    model(&dir, &people(7));
    let ferry = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .args(args)
            .env_remove("FERRY_LAKE")
            .env_remove("FERRY_TARGET")
            .output()
            .unwrap()
    };
    let out = ferry(&["--target", "sandbox", "sync", "contacts"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.lines()
            .next()
            .is_some_and(|l| l.starts_with("target: sandbox; lake: ")
                && l.contains(&format!(
                    "/targets/sandbox; destinations: sf {}",
                    sandbox.base_url()
                ))),
        "{said}"
    );
    assert_eq!(sandbox.records("Contact").len(), 7);
    assert_eq!(prod.records("Contact").len(), 0, "prod untouched");

    // prod: not a git repository, then a dirty tree: refused, nothing sent.
    let out = ferry(&["--target", "prod", "sync", "contacts"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("requires a clean git tree")
            && e.contains("not in a git repository"),
        "{e}"
    );
    let git = |args: &[&str]| {
        assert!(
            std::process::Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
                .args(args)
                .output()
                .unwrap()
                .status
                .success()
        );
    };
    git(&["init", "-q"]);
    git(&["add", "ferry.toml", "models"]);
    git(&["commit", "-q", "-m", "project"]);
    model(&dir, &people(9));
    let out = ferry(&["--target", "prod", "sync", "contacts"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("commit or stash") && e.contains("models/people.sql"),
        "{e}"
    );
    assert_eq!(prod.records("Contact").len(), 0);
    git(&["commit", "-q", "-am", "nine people"]);
    let out = ferry(&["--target", "prod", "sync", "contacts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(prod.records("Contact").len(), 9);
}

/// Salesforce as a source: the first run lands every lead; the next lands
/// only what changed since, deletions included (`queryAll`, `IsDeleted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extract_is_incremental_on_system_modstamp_with_deletions() {
    let s = sim(SimConfig {
        query_page: 2,
        ..SimConfig::default()
    })
    .await;
    let ids: Vec<String> = s
        .with_org(|org| {
            (0..5)
                .map(|i| {
                    let mut m = serde_json::Map::new();
                    m.insert("LastName".into(), format!("Lead{i}").into());
                    m.insert("Company".into(), "Acme".into());
                    m.insert("Email".into(), format!("lead{i}@example.com").into());
                    org.insert("Lead", &[m]).unwrap().remove(0).unwrap().0
                })
                .collect()
        })
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[sources.sf]\ntype = \"salesforce\"\nurl = \"{}\"\nsearch_lag_margin_seconds = 0\n\
             [sources.sf.oauth]\nclient_id = \"ferry-sim-client\"\nclient_secret = \"${{SF_SECRET}}\"\nrefresh_token = \"${{SF_REFRESH}}\"\n\
             [sources.sf.streams.leads]\nobject = \"Lead\"\n",
            s.base_url()
        ),
    )
    .unwrap();
    let extract = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .arg("extract")
            .env_remove("FERRY_LAKE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    extract();
    assert_eq!(
        query(&dir, "select count(*) from sf.leads").await,
        vec![vec!["5".to_string()]]
    );

    // One changed, one deleted, one new.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.with_org(|org| {
        let mut m = serde_json::Map::new();
        m.insert("Id".into(), ids[1].clone().into());
        m.insert("attributes".into(), serde_json::json!({"type": "Lead"}));
        m.insert("LastName".into(), "Renamed".into());
        org.update(&[m]).unwrap();
        org.delete(&[ids[2].clone()]);
        let mut n = serde_json::Map::new();
        n.insert("LastName".into(), "Lead5".into());
        n.insert("Company".into(), "Acme".into());
        org.insert("Lead", &[n]).unwrap();
    });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    extract();
    let rows = query(&dir, "select count(*) from sf.leads").await;
    assert_eq!(
        rows,
        vec![vec!["8".to_string()]],
        "5 first, then the 3 changes only"
    );
    let latest = query(
        &dir,
        &format!(
            "select \"LastName\", cast(\"IsDeleted\" as varchar) from sf.leads where \"Id\" in ('{}', '{}') order by \"_ferry_loaded_at\" desc limit 2",
            ids[1], ids[2]
        ),
    )
    .await;
    let mut got: Vec<(String, String)> = latest
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("Lead2".to_string(), "true".to_string()),
            ("Renamed".to_string(), "false".to_string())
        ]
    );
}

/// `project` with Bulk API 2.0 from `threshold` rows.
fn bulk_project(dir: &Path, url: &str, threshold: usize) -> PathBuf {
    let dir = project(dir, url, REFRESH);
    let toml = std::fs::read_to_string(dir.join("ferry.toml"))
        .unwrap()
        .replace(
            "max_attempts = 6",
            &format!("max_attempts = 6\nbulk_threshold = {threshold}"),
        );
    std::fs::write(dir.join("ferry.toml"), toml).unwrap();
    dir
}

/// Emulated bulk timing short enough for tests.
fn quick_bulk() -> SimConfig {
    SimConfig {
        bulk_start_ms: 50,
        bulk_batch_ms: 20,
        ..SimConfig::default()
    }
}

/// A run of `bulk_threshold` rows or more goes by one Bulk API 2.0 job:
/// per-record failures (a required field, a validation rule) land in the
/// sync log with their codes and fields, cleared values are cleared (`#N/A`),
/// and every row's log names its job. Smaller runs, and runs the org's
/// bulk batches no longer cover, go by Collections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_runs_go_by_bulk_jobs_with_per_record_errors_in_the_sync_log() {
    let s = sim(quick_bulk()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = bulk_project(tmp.path(), &s.base_url(), 100);
    let mut data = people(1_500);
    data[7].1 = String::new();
    data[8].2 = "150".into();
    model(&dir, &data);
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((r.counts.created, r.counts.rejected), (1_498, 2), "{r:?}");
    let jobs = s.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = jobs.values().next().unwrap();
    assert_eq!(
        (job.state.as_str(), job.operation.as_str()),
        ("JobComplete", "upsert")
    );
    // /limits, describe; create, upload, close, polls, three result sets:
    // far fewer than the 8 Collections calls 1,500 rows would take... plus polls.
    assert!(r.api_calls <= 16, "{r:?}");
    assert_eq!(s.bulk_batches().1, 1);
    assert_eq!(contacts(&s).len(), 1_498);
    let log = query(
        &dir,
        "select key, error_category, error_message, response from ferry.sync_log where status = 'rejected' order by key",
    )
    .await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0][0], "person7@example.com");
    assert_eq!(log[0][1], "REQUIRED_FIELD_MISSING");
    assert!(log[0][2].contains("LastName"), "{log:?}");
    assert_eq!(log[1][1], "FIELD_CUSTOM_VALIDATION_EXCEPTION");
    assert!(
        log[1][2].contains("Lead score cannot exceed 100"),
        "{log:?}"
    );
    assert!(log[1][3].contains(&job.id), "{log:?}");
    let carried = query(
        &dir,
        &format!(
            "select count(*) from ferry.sync_log where status = 'ok' and response like '%{}%'",
            job.id
        ),
    )
    .await;
    assert_eq!(carried[0][0], "1498");

    // 150 changes (one clears a score): a second job, of updates by key.
    data[7].1 = "Seven".into();
    data[8].2 = "80".into();
    for row in data.iter_mut().skip(100).take(148) {
        row.2 = "7".into();
    }
    data[300].2 = String::new();
    model(&dir, &data);
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.rejected),
        (2, 148, 0),
        "{r:?}"
    );
    assert_eq!(s.jobs().len(), 2);
    let org = contacts(&s);
    assert_eq!(org.len(), 1_500);
    assert_eq!(org["person120@example.com"].1, "7");
    assert_eq!(org["person300@example.com"].1, "-1", "the cleared score");
    assert_eq!(org["person7@example.com"].0, "Seven");

    // Under the threshold: Collections, no job.
    data[1].2 = "55".into();
    model(&dir, &data);
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.updated, 1, "{r:?}");
    assert_eq!(s.jobs().len(), 2);
    assert!(r.clean());
}

/// When the org's daily bulk batches do not cover a job, its rows go by
/// sObject Collections instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_bulk_batches_send_by_collections() {
    let s = sim(SimConfig {
        bulk_batches: 0,
        ..quick_bulk()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = bulk_project(tmp.path(), &s.base_url(), 100);
    model(&dir, &people(450));
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.created, 450, "{r:?}");
    assert!(s.jobs().is_empty());
    assert_eq!(r.api_calls, 5, "{r:?}"); // /limits, describe, 3 Collections calls
}

/// Bulk jobs under 20% faults (503s, dropped connections, lost replies to
/// uploads and closes, jobs failing part-way): runs converge on the model
/// with no duplicate contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_jobs_under_faults_converge_without_duplicates() {
    let s = sim(quick_bulk()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = bulk_project(tmp.path(), &s.base_url(), 50);
    let mut data = people(800);
    model(&dir, &data);
    s.set_faults(salesforce::Faults {
        server_error: 0.08,
        dropped: 0.06,
        lost_after_write: 0.06,
        job_failure: 0.2,
        ..salesforce::Faults::default()
    });
    for round in 0..10 {
        if round == 5 {
            for (i, row) in data.iter_mut().enumerate() {
                if i % 3 == 0 {
                    row.2 = format!("{}", (i % 50) + 1);
                }
            }
            model(&dir, &data);
        }
        let _ = sync(&dir, "contacts", SyncOptions::default()).await;
    }
    s.set_faults(salesforce::Faults::default());
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert!(r.clean(), "{r:?}");
    let org = contacts(&s);
    assert_eq!(org.len(), 800);
    for (email, name, score) in &data {
        assert_eq!(&org[email], &(name.clone(), score.clone()), "{email}");
    }
    assert!(s.jobs().len() >= 2);
}

/// The real binary, killed with SIGKILL 20 times while it syncs by Bulk
/// jobs (while planning, between recording a job and uploading it, and
/// while the job processes); then run to completion. Every contact exists
/// once with the model's values; a job that had been processing was
/// resumed by a later run (its rows' log names the run that opened it);
/// and no row was processed by two jobs, so nothing was uploaded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_bulk_jobs_run_resumes_them_and_never_uploads_twice() {
    use rand::Rng;
    // Each run has a model to send and a job slower than the longest wait
    // before the kill: a run that has nothing to do finishes before it can
    // be killed, and on a loaded machine too many did (regression:
    // "runs finish too fast to be killed" when the model changed every
    // third round).
    let s = sim(SimConfig {
        bulk_start_ms: 300,
        bulk_batch_ms: 1_500,
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = bulk_project(tmp.path(), &s.base_url(), 100);
    let write_model = |round: usize| {
        let rows: People = (0..2_000)
            .map(|i| {
                (
                    format!("person{i}@example.com"),
                    format!("Name{round}x{}", i % 7),
                    format!("{}", (i + round) % 90),
                )
            })
            .collect();
        model(&dir, &rows);
        rows
    };
    let mut data = write_model(0);
    let run = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(dir)
            .args(["sync", "contacts"])
            .env_remove("FERRY_LAKE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("last-run.err")).unwrap())
            .spawn()
            .unwrap()
    };
    let mut rng = rand::rng();
    let (mut killed, mut finished_early, mut round) = (0, 0, 0);
    while killed < 20 {
        data = write_model(round);
        round += 1;
        let mut child = run(&dir);
        tokio::time::sleep(std::time::Duration::from_millis(
            rng.random_range(100..1800),
        ))
        .await;
        match child.try_wait().unwrap() {
            Some(_) => finished_early += 1,
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
        assert!(
            finished_early < 40,
            "runs finish too fast to be killed; the last said: {}",
            std::fs::read_to_string(dir.join("last-run.err")).unwrap_or_default()
        );
    }
    let mut done = false;
    for _ in 0..10 {
        if run(&dir).wait().unwrap().success() {
            done = true;
            break;
        }
    }
    assert!(done, "ferry sync never finished after the kills");
    let org = contacts(&s);
    assert_eq!(org.len(), 2_000);
    for (email, name, score) in &data {
        assert_eq!(&org[email], &(name.clone(), score.clone()), "{email}");
    }
    // No row (key and values) was processed by two jobs.
    let mut seen = std::collections::HashSet::new();
    for job in s.jobs().values().filter(|j| j.processed > 0) {
        for row in &job.rows {
            assert!(
                seen.insert(row.clone()),
                "{row:?} processed twice (job {})",
                job.id
            );
        }
    }
    let resumed = query(
        &dir,
        "select count(distinct response) from ferry.sync_log where response like '%opened_by%' \
         and response not like concat('%', run_id, '%')",
    )
    .await;
    let resumed: u32 = resumed[0][0].parse().unwrap_or(0);
    assert!(
        resumed >= 1,
        "no killed run's job was resumed by a later run"
    );
    // Nothing is left open.
    let left = std::fs::read_dir(dir.join("lake/_ferry/sync_state/contacts/jobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "job records left unsettled");
}

/// A revertible Salesforce sync, sent by a Bulk job: the revert writes the
/// replaced values back (clearing what the run filled in), archives the
/// contacts the run created, and leaves a field edited since alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_restores_what_a_salesforce_run_replaced() {
    let s = sim(quick_bulk()).await;
    s.with_org(|org| {
        for (i, score) in [(0, Some(5.0)), (1, None), (2, Some(9.0))] {
            let mut m = serde_json::Map::new();
            m.insert(
                "Ferry_Email__c".into(),
                format!("person{i}@example.com").into(),
            );
            m.insert("LastName".into(), format!("Before{i}").into());
            if let Some(v) = score {
                m.insert("Ferry_Lead_Score__c".into(), v.into());
            }
            org.insert("Contact", &[m]).unwrap();
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = bulk_project(tmp.path(), &s.base_url(), 1);
    let toml = std::fs::read_to_string(dir.join("ferry.toml"))
        .unwrap()
        .replace("mode = \"upsert\"", "mode = \"upsert\"\nrevertible = true");
    std::fs::write(dir.join("ferry.toml"), toml).unwrap();
    model(&dir, &people(5));
    let run = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((run.counts.created, run.counts.updated), (2, 3), "{run:?}");
    assert_eq!(s.jobs().len(), 1, "sent by a Bulk job");
    // An admin renames person2 after the run.
    s.with_org(|org| {
        let c = org.object_mut("Contact").unwrap();
        let id = c
            .records
            .values()
            .find(|r| r.values["Ferry_Email__c"] == "person2@example.com")
            .unwrap()
            .id
            .clone();
        c.records
            .get_mut(&id)
            .unwrap()
            .values
            .insert("LastName".into(), "Renamed".into());
    });
    let project = ferry::project::Project::load(&dir).unwrap();
    let lake = ferry::lake::Lake::open(&project.lake, &project.dir).unwrap();
    let dry = ferry::sync::Syncer::new(&project, lake.clone())
        .revert(
            run.run_id.as_str(),
            &SyncOptions {
                dry_run: true,
                ..SyncOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((dry.counts.updated, dry.counts.archived), (3, 2), "{dry:?}");
    assert_eq!(contacts(&s).len(), 5, "a dry run writes nothing");
    let r = ferry::sync::Syncer::new(&project, lake)
        .revert(run.run_id.as_str(), &SyncOptions::default())
        .await
        .unwrap();
    assert_eq!((r.counts.updated, r.counts.archived), (3, 2), "{r:?}");
    let changed = query(
        &dir,
        "select key, error_message from ferry.sync_log where error_category = 'CHANGED_SINCE'",
    )
    .await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0][0], "person2@example.com");
    assert!(changed[0][1].contains("LastName"), "{changed:?}");
    let org = contacts(&s);
    assert_eq!(org.len(), 3, "{org:?}");
    assert_eq!(org["person0@example.com"], ("Before0".into(), "5".into()));
    assert_eq!(
        org["person1@example.com"],
        ("Before1".into(), "-1".into()),
        "a score the run set is cleared"
    );
    assert_eq!(org["person2@example.com"], ("Renamed".into(), "9".into()));
}

/// `mode = "audience"` on Salesforce: the campaign is created, its
/// members follow the segment (contacts by their ids), a member added
/// twice (a lost reply, sent again) is `DUPLICATE_VALUE` and counts as
/// added, and a mass removal is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_follows_the_segment_on_salesforce() {
    let s = sim(SimConfig::default()).await;
    s.with_org(|org| {
        for i in 0..30 {
            let mut m = serde_json::Map::new();
            m.insert(
                "Ferry_Email__c".into(),
                format!("person{i}@example.com").into(),
            );
            m.insert("LastName".into(), format!("P{i}").into());
            org.insert("Contact", &[m]).unwrap();
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[syncs.mqls]\nmodel = \"people\"\ndestination = \"sf\"\nobject = \"Contact\"\nmode = \"audience\"\n\
             audience = \"Ferry MQLs\"\nmatch = {{ column = \"email\", property = \"Ferry_Email__c\" }}\n"
        ),
    )
    .unwrap();
    let members = |s: &RunningSim| -> std::collections::BTreeSet<String> {
        s.with_org(|org| {
            let campaign = org
                .object("Campaign")
                .unwrap()
                .records
                .values()
                .next()
                .unwrap()
                .id
                .clone();
            let contacts = org.object("Contact").unwrap();
            org.object("CampaignMember")
                .unwrap()
                .records
                .values()
                .filter(|m| !m.deleted && m.values["CampaignId"] == campaign.as_str())
                .map(|m| {
                    let c = m.values["ContactId"].as_str().unwrap();
                    contacts.records[c].values["Ferry_Email__c"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .unwrap()
    };
    let mut data = people(26);
    data[25].0 = "stranger@example.com".into();
    model(&dir, &data);
    let r = sync(&dir, "mqls", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.rejected), (25, 1), "{r:?}");
    let want = |d: &People| -> std::collections::BTreeSet<String> {
        d.iter()
            .map(|r| r.0.clone())
            .filter(|e| e != "stranger@example.com")
            .collect()
    };
    assert_eq!(members(&s), want(&data));
    // Three leave, four join; one join's member already exists (added by
    // hand): DUPLICATE_VALUE, which is what the sync wanted.
    s.with_org(|org| {
        let campaign = org
            .object("Campaign")
            .unwrap()
            .records
            .values()
            .next()
            .unwrap()
            .id
            .clone();
        let c = org
            .object("Contact")
            .unwrap()
            .records
            .values()
            .find(|r| r.values["Ferry_Email__c"] == "person27@example.com")
            .unwrap()
            .id
            .clone();
        let mut m = serde_json::Map::new();
        m.insert("CampaignId".into(), campaign.into());
        m.insert("ContactId".into(), c.into());
        org.insert("CampaignMember", &[m]).unwrap();
    });
    data.drain(0..3);
    data.retain(|r| r.0 != "stranger@example.com");
    for i in 26..30 {
        data.push((format!("person{i}@example.com"), "x".into(), "1".into()));
    }
    model(&dir, &data);
    let r = sync(&dir, "mqls", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.archived, r.counts.rejected),
        (4, 3, 0),
        "{r:?}"
    );
    assert_eq!(members(&s), want(&data));
    // A segment of one would remove 25 of 26: refused, nothing sent.
    model(&dir, &data[..1].to_vec());
    let e = sync(&dir, "mqls", SyncOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_delete_pct"), "{e}");
    assert_eq!(members(&s).len(), 26);
}

/// The real binary, killed with SIGKILL at random moments while it fills
/// a campaign of 400 in batches of 20, then run to completion: the
/// campaign's members equal the segment, each contact is a member once,
/// and no member confirmed by one run is confirmed again by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_campaign_resumes_without_duplicate_members() {
    use rand::Rng;
    let s = sim(SimConfig {
        faults: salesforce::Faults {
            slow: 0.5,
            slow_ms: 120,
            ..salesforce::Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    s.with_org(|org| {
        for i in 0..400 {
            let mut m = serde_json::Map::new();
            m.insert(
                "Ferry_Email__c".into(),
                format!("person{i}@example.com").into(),
            );
            m.insert("LastName".into(), format!("P{i}").into());
            org.insert("Contact", &[m]).unwrap();
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), REFRESH);
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[syncs.mqls]\nmodel = \"people\"\ndestination = \"sf\"\nobject = \"Contact\"\nmode = \"audience\"\n\
             audience = \"Ferry MQLs\"\nbatch_size = 20\nmatch = {{ column = \"email\", property = \"Ferry_Email__c\" }}\n"
        ),
    )
    .unwrap();
    model(&dir, &people(400));
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .args(["sync", "mqls"])
            .env_remove("FERRY_LAKE")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = rand::rng();
    // Runs that finish before their kill (more of them on a loaded machine)
    // do not count: keep going until 5 were killed mid-run.
    let mut killed = 0;
    for _ in 0..30 {
        if killed >= 5 {
            break;
        }
        let mut child = run();
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(200..900))).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            killed += 1;
        }
    }
    assert!(killed >= 5, "only {killed} of 30 runs were killed");
    s.set_faults(salesforce::Faults::default());
    assert!(run().wait().unwrap().success());
    let (campaigns, per_contact) = s
        .with_org(|org| {
            let campaigns = org.object("Campaign").unwrap().records.len();
            let mut per_contact: std::collections::BTreeMap<String, usize> = Default::default();
            for m in org.object("CampaignMember").unwrap().records.values() {
                if !m.deleted {
                    *per_contact
                        .entry(m.values["ContactId"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
            (campaigns, per_contact)
        })
        .unwrap();
    assert_eq!(
        campaigns, 1,
        "one campaign, found by name after the first run"
    );
    assert_eq!(per_contact.len(), 400);
    assert!(
        per_contact.values().all(|n| *n == 1),
        "a contact is a member twice"
    );
    let twice = query(
        &dir,
        "select key from ferry.sync_log where operation = 'add' and status = 'ok' group by key having count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "members confirmed twice: {twice:?}");
}

/// A shutdown (SIGTERM in `ferry serve`) while a Bulk job processes does
/// not wait for the job: the run stops at once, the job's record stays,
/// and the next run waits for the job and logs its rows, sending nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_bulk_job_leaves_it_to_the_next_run() {
    let s = sim(SimConfig {
        bulk_start_ms: 50,
        bulk_batch_ms: 4_000,
        ..SimConfig::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = bulk_project(tmp.path(), &s.base_url(), 10);
    model(&dir, &people(300));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let _ = tx.send(true);
        tx
    });
    let started = std::time::Instant::now();
    let r = sync(
        &dir,
        "contacts",
        SyncOptions {
            shutdown: Some(rx),
            ..SyncOptions::default()
        },
    )
    .await
    .unwrap();
    let _tx = stopper.await.unwrap();
    assert!(
        r.stopped
            .as_deref()
            .is_some_and(|m| m.contains("shutting down")),
        "{r:?}"
    );
    assert_eq!(r.counts.unknown, 300, "{r:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the run waited for the job"
    );
    let left = std::fs::read_dir(dir.join("lake/_ferry/sync_state/contacts/jobs"))
        .unwrap()
        .count();
    assert_eq!(left, 1);
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    // The resumed job's 300 are logged as created; the diff after them
    // finds every row unchanged.
    assert_eq!((r.counts.created, r.counts.unchanged), (300, 300), "{r:?}");
    assert_eq!(s.jobs().len(), 1, "the rows were not sent in a second job");
    assert_eq!(contacts(&s).len(), 300);
    let r = sync(&dir, "contacts", SyncOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.unchanged, 300, "{r:?}");
}

/// Leads for the extract tests: `n` of them, each with a score.
fn plant_leads(s: &RunningSim, n: usize) -> Vec<String> {
    s.with_org(|org| {
        (0..n)
            .map(|i| {
                let mut m = serde_json::Map::new();
                m.insert("LastName".into(), format!("Lead{i}").into());
                m.insert("Company".into(), "Acme, \"Inc\"".into());
                m.insert("Email".into(), format!("lead{i}@example.com").into());
                m.insert("Ferry_Lead_Score__c".into(), (i as f64 + 0.5).into());
                org.insert("Lead", &[m]).unwrap().remove(0).unwrap().0
            })
            .collect()
    })
    .unwrap()
}

/// A project extracting Salesforce leads as `sf.leads`, Bulk from `threshold`.
fn extract_project(dir: &Path, url: &str, threshold: u64) -> PathBuf {
    let dir = project(dir, url, REFRESH);
    let toml = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            "{toml}\n[sources.sf]\ntype = \"salesforce\"\nurl = \"{url}\"\nsearch_lag_margin_seconds = 0\nbulk_threshold = {threshold}\n\
             [sources.sf.oauth]\nclient_id = \"ferry-sim-client\"\nclient_secret = \"${{SF_SECRET}}\"\nrefresh_token = \"${{SF_REFRESH}}\"\n\
             [sources.sf.streams.leads]\nobject = \"Lead\"\n"
        ),
    )
    .unwrap();
    dir
}

fn run_extract(dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(dir)
        .arg("extract")
        .env_remove("FERRY_LAKE")
        .output()
        .unwrap()
}

/// A stream matching `bulk_threshold` records or more is read by one Bulk
/// API 2.0 `queryAll` job (no ORDER BY, which Bulk queries refuse), its
/// results paged by `Sforce-Locator` and typed by `describe` as the REST
/// path types them; a later, smaller run goes by the REST query API into
/// the same table; deleted records land flagged either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_extracts_go_by_bulk_query_jobs_and_small_ones_by_rest() {
    let s = sim(SimConfig {
        query_results_page: 3,
        ..quick_bulk()
    })
    .await;
    let ids = plant_leads(&s, 8);
    s.with_org(|org| org.delete(&[ids[7].clone()])).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = extract_project(tmp.path(), &s.base_url(), 5);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let out = run_extract(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.query_jobs_created(), 1, "one Bulk query job");
    assert!(
        s.query_jobs().is_empty(),
        "the job is deleted once its results landed: {:?}",
        s.query_jobs()
    );
    assert_eq!(
        query(
            &dir,
            "select count(*), sum(\"Ferry_Lead_Score__c\"), sum(case when \"IsDeleted\" then 1 else 0 end), min(\"Company\") from sf.leads"
        )
        .await,
        vec![vec![
            "8".to_string(),
            "32.0".to_string(),
            "1".to_string(),
            "Acme, \"Inc\"".to_string()
        ]],
        "every record, the deleted one flagged, numbers as numbers, quoted text intact"
    );

    // Two changes: under the threshold, so REST, into the same table.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.with_org(|org| {
        for id in &ids[..2] {
            let mut m = serde_json::Map::new();
            m.insert("Id".into(), id.clone().into());
            m.insert("attributes".into(), serde_json::json!({"type": "Lead"}));
            m.insert("Ferry_Lead_Score__c".into(), 100.0.into());
            org.update(&[m]).unwrap();
        }
    })
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let out = run_extract(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.query_jobs_created(), 1, "the small run used no job");
    assert_eq!(
        query(
            &dir,
            "select count(*), sum(case when \"Ferry_Lead_Score__c\" = 100 then 1 else 0 end) from sf.leads"
        )
        .await,
        vec![vec!["10".to_string(), "2".to_string()]]
    );
}

/// A query job that fails fails the stream with the job's reason and
/// moves no cursor: the next run reads everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bulk_query_job_fails_the_stream_and_the_next_run_reads_it_all() {
    let s = sim(SimConfig {
        faults: salesforce::Faults {
            job_failure: 1.0,
            ..Default::default()
        },
        ..quick_bulk()
    })
    .await;
    plant_leads(&s, 4);
    let tmp = tempfile::tempdir().unwrap();
    let dir = extract_project(tmp.path(), &s.base_url(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let out = run_extract(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed job fails the run");
    assert!(
        stderr.contains("Bulk query job") && stderr.contains("Failed"),
        "the error names the job and its state: {stderr}"
    );
    s.set_faults(salesforce::Faults::default());
    let out = run_extract(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        query(&dir, "select count(*) from sf.leads").await,
        vec![vec!["4".to_string()]]
    );
}
