//! `ferry check`: everything that can be validated without a network call
//! or a model run, in about a second: the configuration (loading the
//! project checks `ferry.toml`, every target and the schema files), the
//! secrets of what will be called, every model compiled against its
//! inputs, every sync's model, columns and match key, every data test's
//! column, and the selection. `ferry build` runs it first.
//!
//! A missing secret is a finding of the source or sync that needs it, not
//! of the project: `ferry build` still runs the others (that source's
//! extract and that sync fail on their own, with the same message).

use std::collections::BTreeSet;
use std::time::Instant;

use super::Selection;
use crate::console;
use crate::error::{Error, Result};
use crate::http::Auth;
use crate::lake::Lake;
use crate::models::Compiled;
use crate::project::Project;

/// One problem `ferry check` found.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `secrets`, `models`, `syncs` or `tests`.
    pub area: &'static str,
    /// What it is about: `source hubspot`, `model contact_scores`, ...
    pub subject: String,
    pub message: String,
}

/// What `ferry check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// Sources and syncs that cannot run for want of a secret.
    pub missing_secrets: BTreeSet<String>,
    pub models: usize,
    pub syncs: usize,
    pub tests: usize,
    pub sources: usize,
    /// Models not checked because they read one that does not compile.
    pub blocked: usize,
    /// Streams not landed yet that models read (the first extract lands
    /// them; those models are checked once it has).
    pub waiting: BTreeSet<String>,
    pub waiting_models: usize,
    pub seconds: f64,
}

impl CheckReport {
    /// One line for a build's summary: the first problem, and how many more.
    pub fn summary(findings: &[&Finding]) -> String {
        match findings {
            [] => String::new(),
            [one] => format!("{}: {}", one.subject, one.message),
            [first, rest @ ..] => format!(
                "{}: {} (and {} more, above)",
                first.subject,
                first.message,
                rest.len()
            ),
        }
    }

    /// Problems other than missing secrets: what stops a build before it starts.
    pub fn blocking(&self) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.area != "secrets")
            .collect()
    }
}

fn missing(auth: &Auth) -> Option<&str> {
    match auth {
        Auth::Missing(why) => Some(why.as_str()),
        _ => None,
    }
}

/// Check the project; `Err` only when it cannot be checked at all (the
/// selection does not parse, the lake cannot be opened).
pub async fn check(project: &Project, lake: &Lake, selection: &Selection) -> Result<CheckReport> {
    let t = Instant::now();
    let mut report = CheckReport::default();
    // Secrets of what will be called.
    for spec in project.extract.values() {
        report.sources += 1;
        let auth = match spec {
            crate::extract::config::SourceSpec::Rest { auth, .. }
            | crate::extract::config::SourceSpec::Hubspot { auth, .. }
            | crate::extract::config::SourceSpec::Salesforce { auth, .. } => Some(auth),
            crate::extract::config::SourceSpec::Files { .. } => None,
        };
        if let Some(why) = auth.and_then(missing) {
            report
                .missing_secrets
                .insert(format!("source {}", spec.name()));
            report.findings.push(Finding {
                area: "secrets",
                subject: format!("source {}", spec.name()),
                message: why.to_string(),
            });
        }
    }
    for sync in project.syncs.values() {
        if let Some(d) = project.destinations.get(&sync.destination)
            && let Some(why) = missing(&d.auth)
        {
            report.missing_secrets.insert(format!("sync {}", sync.name));
            report.findings.push(Finding {
                area: "secrets",
                subject: format!("sync {}", sync.name),
                message: format!("destination {}: {why}", d.name),
            });
        }
    }
    // Models: rendered and planned, every one, going on after a failure.
    let (ws, selected) = super::models::load(project, selection)?;
    let ctx = crate::engine::session(lake).await?;
    let configured: BTreeSet<String> = project
        .sources
        .keys()
        .chain(project.webhooks.keys())
        .cloned()
        .collect();
    let compiled = ws.compile_each(&ctx, lake, &configured).await?;
    let mut good = Vec::new();
    for (name, r) in &compiled {
        report.models += 1;
        match r {
            Compiled::Ok(_) => good.push(name.clone()),
            Compiled::Failed(e) => report.findings.push(Finding {
                area: "models",
                subject: format!("model {name}"),
                message: e.to_string(),
            }),
            Compiled::Blocked(_) => report.blocked += 1,
            Compiled::Waiting(stream) => {
                report.waiting_models += 1;
                report.waiting.insert(stream.clone());
            }
        }
    }
    // Syncs: their model exists and has the columns they map and match on.
    for sync in project.syncs.values() {
        report.syncs += 1;
        if !ws.project.models.iter().any(|m| m.name == sync.model) {
            let names: Vec<String> = ws.project.models.iter().map(|m| m.name.clone()).collect();
            report.findings.push(Finding {
                area: "syncs",
                subject: format!("sync {}", sync.name),
                message: format!(
                    "its model {} does not exist{}. Fix model = in [syncs.{}]",
                    sync.model,
                    crate::models::project::suggest(&sync.model, &names),
                    sync.name
                ),
            });
            continue;
        }
        let Some((_, Compiled::Ok(schema))) = compiled.iter().find(|(n, _)| *n == sync.model)
        else {
            continue;
        };
        let checked = datafusion::common::DFSchema::try_from(schema.as_ref().clone())
            .map_err(Error::from)
            .and_then(|s| crate::sync::check_columns(sync, &s));
        if let Err(e) = checked {
            report.findings.push(Finding {
                area: "syncs",
                subject: format!("sync {}", sync.name),
                message: e.to_string(),
            });
        }
    }
    // Data tests: the column each names is in its model.
    for test in &ws.project.tests {
        if !selected.contains(&test.model) {
            continue;
        }
        report.tests += 1;
        if !good.contains(&test.model) {
            continue;
        }
        if let Some(why) = crate::models::datatest::missing_column(&ws, &ctx, test).await {
            report.findings.push(Finding {
                area: "tests",
                subject: format!("test {} on {}", test.kind, test.model),
                message: why,
            });
        }
    }
    report.tests += ws.project.singular_tests.len();
    report.seconds = t.elapsed().as_secs_f64();
    Ok(report)
}

/// Print the report the way `ferry check` and `ferry build` show it.
pub fn print(report: &CheckReport) {
    let area = |a: &str| report.findings.iter().filter(|f| f.area == a).count();
    let line = |name: &str, bad: usize, ok: String| {
        let word = if bad == 0 { "OK" } else { "FAIL" };
        console::line(format!(
            "  {:<8} {} {}",
            name,
            console::status(word, 4),
            if bad == 0 {
                ok
            } else {
                super::count(bad, "problem")
            }
        ));
    };
    line(
        "secrets",
        area("secrets"),
        format!(
            "every credential of {} and {} is set",
            super::count(report.sources, "source"),
            super::count(report.syncs, "sync")
        ),
    );
    let checked = report.models - report.blocked - report.waiting_models;
    let mut models = format!(
        "{} {} against {} inputs",
        super::count(checked, "model"),
        if checked == 1 { "compiles" } else { "compile" },
        if checked == 1 { "its" } else { "their" }
    );
    if report.blocked > 0 {
        models.push_str(&format!(
            "; {} downstream of a failing one not checked",
            report.blocked
        ));
    }
    if !report.waiting.is_empty() {
        models.push_str(&format!(
            "; the rest read {} not extracted yet (checked once they are)",
            report
                .waiting
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let bad = area("models");
    line("models", bad, models.clone());
    if bad > 0 && (report.blocked > 0 || !report.waiting.is_empty()) {
        console::line(format!("           {models}"));
    }
    line(
        "syncs",
        area("syncs"),
        format!(
            "{} {}",
            super::count(report.syncs, "sync"),
            if report.syncs == 1 {
                "maps columns its model has"
            } else {
                "map columns their models have"
            }
        ),
    );
    line(
        "tests",
        area("tests"),
        format!(
            "{} {}",
            super::count(report.tests, "test"),
            if report.tests == 1 {
                "names a column its model has"
            } else {
                "name columns their models have"
            }
        ),
    );
    for f in &report.findings {
        console::line(format!(
            "{} {}: {}",
            console::error_prefix(),
            f.subject,
            f.message
        ));
    }
}

/// `ferry check`: print and fail on any finding.
pub async fn run(project: &Project, lake: &Lake, selection: &Selection) -> Result<()> {
    console::line(project.target_line());
    let report = check(project, lake, selection).await?;
    print(&report);
    console::line(format!("checked in {:.2}s", report.seconds));
    if report.findings.is_empty() {
        return Ok(());
    }
    Err(Error::Input(format!(
        "ferry check found {}; fix them before `ferry build`",
        super::count(report.findings.len(), "problem")
    )))
}
