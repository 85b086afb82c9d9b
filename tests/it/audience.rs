//! `mode = "audience"`: a model of keys kept equal to a HubSpot list or a
//! Salesforce campaign's members, by the diff, across runs.

use std::collections::BTreeSet;

use ferry::sim::hubspot::SimConfig;
use ferry::sync::SyncOptions;

use super::sync::{model, plant, project, query, sim, sync};

const AUDIENCE: &str = r#"[syncs.mqls]
model = "mqls"
destination = "hubspot"
object = "contacts"
mode = "audience"
audience = "Ferry MQLs"
batch_size = 20
match = { column = "email", property = "email" }
"#;

fn segment(emails: impl Iterator<Item = String>) -> super::sync::Rows {
    emails.map(|e| (Some(e), None, None)).collect()
}

fn members(s: &ferry::sim::hubspot::RunningSim) -> BTreeSet<String> {
    s.with_crm(|crm| {
        let list = crm.lists.values().find(|l| l.name == "Ferry MQLs").unwrap();
        list.members
            .iter()
            .map(|id| crm.types["contacts"].records[id].properties["email"].clone())
            .collect()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hubspot_list_follows_the_segment_and_a_mass_removal_is_refused() {
    let s = sim(SimConfig::default()).await;
    for i in 0..40 {
        plant(
            &s,
            "contacts",
            &[("email", &format!("person{i}@example.com"))],
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), AUDIENCE);
    let mut want: Vec<String> = (0..30).map(|i| format!("person{i}@example.com")).collect();
    let with_stranger = want
        .iter()
        .cloned()
        .chain(["nobody@example.com".to_string()]);
    model(&dir, "mqls", &segment(with_stranger));

    let dry = sync(
        &dir,
        "mqls",
        SyncOptions {
            dry_run: true,
            ..SyncOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.counts.created, 31, "{dry:?}");
    assert!(
        s.with_crm(|c| c.lists.is_empty()).unwrap(),
        "a dry run creates no list"
    );

    let r = sync(&dir, "mqls", SyncOptions::default()).await.unwrap();
    assert_eq!((r.counts.created, r.counts.rejected), (30, 1), "{r:?}");
    assert_eq!(members(&s), want.iter().cloned().collect());
    let missing = query(
        &dir,
        "select key, error_category from ferry.sync_log where status = 'rejected'",
    )
    .await;
    assert_eq!(
        missing,
        vec![vec![
            "nobody@example.com".to_string(),
            "OBJECT_NOT_FOUND".to_string()
        ]]
    );

    // Three leave, five join: exactly those calls' worth of change.
    want.drain(0..3);
    want.extend((30..35).map(|i| format!("person{i}@example.com")));
    model(&dir, "mqls", &segment(want.iter().cloned()));
    let r = sync(&dir, "mqls", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.archived, r.counts.unchanged),
        (5, 3, 27),
        "{r:?}"
    );
    assert_eq!(members(&s), want.iter().cloned().collect());
    // Nothing changed: nothing sent but the properties check.
    let r = sync(&dir, "mqls", SyncOptions::default()).await.unwrap();
    assert_eq!(
        (r.counts.created, r.counts.archived, r.api_calls),
        (0, 0, 1),
        "{r:?}"
    );

    // A segment that shrinks to one member would remove 31 of 32: refused.
    model(&dir, "mqls", &segment(want.iter().take(1).cloned()));
    let e = sync(&dir, "mqls", SyncOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_delete_pct") && e.contains("Nothing was sent"),
        "{e}"
    );
    assert_eq!(members(&s).len(), 32);
    let r = sync(
        &dir,
        "mqls",
        SyncOptions {
            allow_mass_delete: true,
            ..SyncOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.counts.archived, 31, "{r:?}");
    assert_eq!(members(&s).len(), 1);
}

/// Membership replies lost after HubSpot applied them, and dropped
/// connections: the runs converge on the segment, and no member confirmed
/// once is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_membership_replies_converge_without_resending_confirmed_members() {
    let s = sim(SimConfig::default()).await;
    for i in 0..200 {
        plant(
            &s,
            "contacts",
            &[("email", &format!("person{i}@example.com"))],
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), AUDIENCE);
    let want: Vec<String> = (0..200)
        .step_by(2)
        .map(|i| format!("person{i}@example.com"))
        .collect();
    model(&dir, "mqls", &segment(want.iter().cloned()));
    s.set_faults(ferry::sim::hubspot::Faults {
        lost_after_write: 0.3,
        dropped: 0.1,
        ..ferry::sim::hubspot::Faults::default()
    });
    for _ in 0..6 {
        let _ = sync(&dir, "mqls", SyncOptions::default()).await;
    }
    s.set_faults(ferry::sim::hubspot::Faults::default());
    let r = sync(&dir, "mqls", SyncOptions::default()).await.unwrap();
    assert!(r.clean(), "{r:?}");
    assert_eq!(members(&s), want.iter().cloned().collect());
    let twice = query(
        &dir,
        "select key from ferry.sync_log where operation = 'add' and status = 'ok' group by key having count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "members confirmed twice: {twice:?}");
}

/// The real binary, killed with SIGKILL at random moments while it fills
/// a list of 600 in batches of 20, then run to completion: the list equals
/// the segment, no member confirmed by one run is sent by another, and the
/// ids sent in all exceed the members by at most the batch each kill left
/// in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_audience_resumes_without_resending_confirmed_members() {
    use rand::Rng;
    let s = sim(SimConfig::default()).await;
    for i in 0..600 {
        plant(
            &s,
            "contacts",
            &[("email", &format!("person{i}@example.com"))],
        );
    }
    s.set_faults(ferry::sim::hubspot::Faults {
        slow: 0.5,
        slow_ms: 120,
        ..ferry::sim::hubspot::Faults::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &s.base_url(), AUDIENCE);
    let want: Vec<String> = (0..600).map(|i| format!("person{i}@example.com")).collect();
    model(&dir, "mqls", &segment(want.iter().cloned()));
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
    let mut killed = 0u64;
    for _ in 0..12 {
        let mut child = run();
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(200..900))).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            killed += 1;
        }
    }
    assert!(killed >= 5, "only {killed} runs were killed");
    s.set_faults(ferry::sim::hubspot::Faults::default());
    assert!(run().wait().unwrap().success());
    assert_eq!(members(&s), want.iter().cloned().collect());
    let twice = query(
        &dir,
        "select key from ferry.sync_log where operation = 'add' and status = 'ok' group by key having count(*) > 1",
    )
    .await;
    assert!(twice.is_empty(), "members confirmed twice: {twice:?}");
    let sent = s.with_crm(|c| c.membership_adds_sent).unwrap();
    assert!(
        sent <= 600 + 20 * killed,
        "{sent} ids sent for 600 members and {killed} kills"
    );
}
