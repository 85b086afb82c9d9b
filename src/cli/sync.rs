//! `ferry sync`: run reverse syncs and print what each did.

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::project::Project;
use crate::sync::{SyncOptions, SyncReport, Syncer};

pub async fn run(
    project: &Project,
    lake: Lake,
    names: &[String],
    opts: &SyncOptions,
) -> Result<()> {
    if project.syncs.is_empty() {
        return Err(Error::Input(
            "no syncs in ferry.toml: add a [destinations.<name>] profile and a [syncs.<name>] table (see README: Reverse sync)".into(),
        ));
    }
    println!("{}", project.target_line());
    if !opts.dry_run {
        project.check_clean()?;
    }
    let names: Vec<String> = if names.is_empty() {
        project.syncs.keys().cloned().collect()
    } else {
        names.to_vec()
    };
    let mut syncer = Syncer::new(project, lake);
    let mut failures = Vec::new();
    for name in &names {
        match syncer.run(name, opts).await {
            Ok(report) => {
                print(&report);
                if report.stopped.is_some() || report.counts.failed > 0 || report.counts.unknown > 0
                {
                    failures.push(name.clone());
                }
            }
            Err(e) => {
                eprintln!("sync {name}: error: {e}");
                failures.push(name.clone());
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "sync did not finish cleanly: {}. Rows not confirmed are sent again by the next `ferry sync`; \
             see select * from ferry.sync_log where status <> 'ok'",
            failures.join(", ")
        )))
    }
}

/// `ferry sync revert RUN_ID`.
pub async fn revert(project: &Project, lake: Lake, run_id: &str, opts: &SyncOptions) -> Result<()> {
    println!("{}", project.target_line());
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
    println!(
        "sync {} ({}, run {}): {verb} in {:.1}s",
        r.sync,
        r.mode.as_str(),
        r.run_id,
        r.seconds
    );
    let would = if r.dry_run { "would be " } else { "" };
    println!(
        "  {would}created {}  {would}updated {}  {would}archived {}  unchanged {}  rejected {}  failed {}",
        c.created, c.updated, c.archived, c.unchanged, c.rejected, c.failed
    );
    if c.skipped > 0 {
        println!(
            "  left alone (already in the CRM, insert mode) {}",
            c.skipped
        );
    }
    if c.released > 0 {
        println!("  left the model, not archived {}", c.released);
    }
    if c.not_sent > 0 {
        println!("  not sent (run stopped; sent next run) {}", c.not_sent);
    }
    if c.unknown > 0 {
        println!(
            "  outcome unknown (reply lost; looked up before anything is sent for them next run) {}",
            c.unknown
        );
    }
    println!(
        "  API calls {}  rate limited (429) {}",
        r.api_calls, r.rate_limited
    );
    if let Some(why) = &r.stopped {
        println!("  stopped: {why}");
    }
    if !r.dry_run && (c.rejected > 0 || c.failed > 0 || c.unknown > 0) {
        println!(
            "  see: ferry query \"select key, operation, status, error_category, error_message from ferry.sync_log \
             where run_id = '{}' and status <> 'ok'\"",
            r.run_id
        );
    }
    for s in &r.samples {
        println!("  sample {} {}:", s.action, s.key);
        for (k, after) in &s.after {
            let before = s.before.get(k).map(String::as_str).unwrap_or("");
            println!("    {k}: {before:?} -> {after:?}");
        }
    }
}
