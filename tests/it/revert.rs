//! `ferry sync revert RUN_ID`: a revertible sync records the values each
//! run replaces before it writes; the revert writes them back, archives
//! what the run created, leaves fields changed in the CRM since alone, and
//! is logged as a run of its own. HubSpot here; Salesforce in
//! `salesforce.rs`.

use std::path::Path;

use ferry::sim::hubspot::SimConfig;
use ferry::sync::SyncOptions;

use super::sync::{SCORES, crm, model, plant, project, query, sim, sync};

fn ferry(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(dir)
        .args(args)
        .env_remove("FERRY_LAKE")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn some(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_restores_what_a_hubspot_run_replaced_and_archives_what_it_created() {
    let s = sim(SimConfig::default()).await;
    for (email, score, persona) in [
        ("a@example.com", "10", "old-a"),
        ("b@example.com", "20", ""),
        ("c@example.com", "30", "old-c"),
    ] {
        let mut props = vec![("email", email), ("ferry_lead_score", score)];
        if !persona.is_empty() {
            props.push(("ferry_persona", persona));
        }
        plant(&s, "contacts", &props);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        &s.base_url(),
        &SCORES.replace("mode = \"upsert\"", "mode = \"upsert\"\nrevertible = true"),
    );
    let rows = vec![
        (some("a@example.com"), some("11"), some("new-a")),
        (some("b@example.com"), some("21"), some("new-b")),
        (some("c@example.com"), some("31"), some("new-c")),
        (some("d@example.com"), some("41"), some("new-d")),
    ];
    model(&dir, "scores", &rows);
    let run = sync(&dir, "scores", SyncOptions::default()).await.unwrap();
    assert_eq!((run.counts.created, run.counts.updated), (1, 3), "{run:?}");
    // Someone edits c's persona in HubSpot after the run.
    s.with_crm(|crm| {
        let id = crm.find_by("contacts", "email", "c@example.com").unwrap();
        crm.types.get_mut("contacts").unwrap().modify(id, |r| {
            r.properties
                .insert("ferry_persona".into(), "hand-edited".into())
        });
    })
    .unwrap();

    let (ok, out) = ferry(&dir, &["sync", "revert", run.run_id.as_str(), "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(
        crm(&s, "contacts", "email")["a@example.com"]["ferry_lead_score"],
        "11"
    );

    let (ok, out) = ferry(&dir, &["sync", "revert", run.run_id.as_str()]);
    assert!(ok, "{out}");
    let now = crm(&s, "contacts", "email");
    assert_eq!(now.len(), 3, "d, created by the run, is archived: {now:?}");
    assert_eq!(now["a@example.com"]["ferry_lead_score"], "10");
    assert_eq!(now["a@example.com"]["ferry_persona"], "old-a");
    assert_eq!(now["b@example.com"]["ferry_lead_score"], "20");
    assert_eq!(
        now["b@example.com"]
            .get("ferry_persona")
            .map(String::as_str)
            .unwrap_or(""),
        "",
        "a value the run filled in is emptied again"
    );
    assert_eq!(now["c@example.com"]["ferry_lead_score"], "30");
    assert_eq!(
        now["c@example.com"]["ferry_persona"], "hand-edited",
        "changed since: left alone"
    );
    let changed = query(
        &dir,
        "select key, error_message from ferry.sync_log where error_category = 'CHANGED_SINCE'",
    )
    .await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0][1].contains("ferry_persona"), "{changed:?}");
    let runs = query(
        &dir,
        "select mode, status from ferry.sync_runs where sync = 'scores' order by started_at",
    )
    .await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1][0], "revert", "{runs:?}");

    // A run of a sync that is not revertible recorded nothing to revert.
    let (ok, out) = ferry(&dir, &["sync", "revert", "no-such-run"]);
    assert!(!ok);
    assert!(out.contains("revertible = true"), "{out}");
}
