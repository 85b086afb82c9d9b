//! `ferry sync`: run reverse syncs and print what each did.

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::project::Project;
use crate::run::{console, count, json};
use crate::sync::{SyncOptions, SyncReport, Syncer};

pub async fn run(
    project: &Project,
    lake: Lake,
    names: &[String],
    opts: &SyncOptions,
    allow_rejects: bool,
) -> Result<()> {
    if project.syncs.is_empty() {
        let r = Err(Error::Input(
            "no syncs in ferry.toml: add a [destinations.<name>] profile and a [syncs.<name>] table (see README: Reverse sync)".into(),
        ));
        json::emit("sync", &r, serde_json::json!({ "syncs": [] }));
        return r;
    }
    console::line(project.target_line());
    if !opts.dry_run
        && let Err(e) = project.check_clean()
    {
        let r = Err(e);
        json::emit("sync", &r, serde_json::json!({ "syncs": [] }));
        return r;
    }
    let names: Vec<String> = if names.is_empty() {
        project.syncs.keys().cloned().collect()
    } else {
        names.to_vec()
    };
    let mut syncer = Syncer::new(project, lake);
    let mut failures = Vec::new();
    let mut in_flight = false;
    let mut rejected = Vec::new();
    let mut docs = Vec::new();
    for name in &names {
        match syncer.run(name, opts).await {
            Ok(report) => {
                print(&report);
                docs.push(json::sync(&report));
                let c = &report.counts;
                if report.stopped.is_some() || c.failed > 0 || c.unknown > 0 {
                    failures.push(name.clone());
                    in_flight |= c.failed > 0 || c.unknown > 0 || c.not_sent > 0;
                }
                if c.rejected > 0 && !report.dry_run {
                    rejected.push(format!(
                        "{name}: {} rejected (see: select key, error_message from ferry.sync_log where run_id = '{}' and status = 'rejected')",
                        count(c.rejected as usize, "row"),
                        report.run_id
                    ));
                }
            }
            Err(e) => {
                eprintln!("{} sync {name}: {e}", console::error_prefix());
                docs.push(json::sync_error(name, &e));
                failures.push(name.clone());
            }
        }
    }
    let outcome = if !failures.is_empty() {
        let again = if in_flight {
            " Rows not confirmed are sent again by the next `ferry sync`;"
        } else {
            ""
        };
        Err(Error::Input(format!(
            "sync did not finish cleanly: {}.{again} see select * from ferry.sync_log where status <> 'ok'",
            failures.join(", ")
        )))
    } else if !rejected.is_empty() && !allow_rejects {
        Err(Error::Rejected(format!(
            "the CRM refused rows: {}. Fix the model's values, or pass --allow-rejects to count this as a success",
            rejected.join("; ")
        )))
    } else {
        Ok(())
    };
    json::emit("sync", &outcome, serde_json::json!({ "syncs": docs }));
    outcome
}

/// `ferry sync revert RUN_ID`.
pub async fn revert(project: &Project, lake: Lake, run_id: &str, opts: &SyncOptions) -> Result<()> {
    console::line(project.target_line());
    if !opts.dry_run {
        project.check_clean()?;
    }
    let report = Syncer::new(project, lake).revert(run_id, opts).await?;
    print(&report);
    if report.stopped.is_some() || report.counts.failed > 0 || report.counts.unknown > 0 {
        return Err(Error::Input(format!(
            "the revert of run {run_id} did not finish; run it again: records already written back are left as they are \
             (see select * from ferry.sync_log where run_id = '{}')",
            report.run_id
        )));
    }
    Ok(())
}

fn print(r: &SyncReport) {
    let c = &r.counts;
    let verb = if r.dry_run {
        "dry run (nothing written)"
    } else {
        "done"
    };
    console::line(format!(
        "sync {} ({}, run {}): {verb} in {:.1}s",
        r.sync,
        r.mode.as_str(),
        r.run_id,
        r.seconds
    ));
    let would = if r.dry_run { "would be " } else { "" };
    console::line(format!(
        "  {would}created {}  {would}updated {}  {would}archived {}  unchanged {}  rejected {}  failed {}",
        c.created, c.updated, c.archived, c.unchanged, c.rejected, c.failed
    ));
    if c.skipped > 0 {
        console::line(format!(
            "  left alone (already in the CRM, insert mode) {}",
            c.skipped
        ));
    }
    if c.released > 0 {
        console::line(format!("  left the model, not archived {}", c.released));
    }
    if c.not_sent > 0 {
        console::line(format!(
            "  not sent (run stopped; sent next run) {}",
            c.not_sent
        ));
    }
    if c.unknown > 0 {
        console::line(format!(
            "  outcome unknown (reply lost; looked up before anything is sent for them next run) {}",
            c.unknown
        ));
    }
    console::line(format!(
        "  API calls {}  rate limited (429) {}",
        r.api_calls, r.rate_limited
    ));
    if let Some(why) = &r.stopped {
        console::line(format!("  stopped: {why}"));
    }
    if !r.dry_run && (c.rejected > 0 || c.failed > 0 || c.unknown > 0) {
        console::line(format!(
            "  see: ferry query \"select key, operation, status, error_category, error_message from ferry.sync_log \
             where run_id = '{}' and status <> 'ok'\"",
            r.run_id
        ));
    }
    for s in &r.samples {
        console::line(format!("  sample {} {}:", s.action, s.key));
        for (k, after) in &s.after {
            let before = s.before.get(k).map(String::as_str).unwrap_or("");
            console::line(format!("    {k}: {before:?} -> {after:?}"));
        }
    }
}
