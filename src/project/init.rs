//! `ferry init DIR`: a new project that works at once.
//!
//! Writes `ferry.toml`, an example model, a small sample of CRM contacts to
//! land, and a `.gitignore` that keeps the local lake and `secrets.toml` out
//! of git. Never overwrites an existing file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const GITIGNORE: &str = "# ferry: the local lake, build output and secrets never go into git\n/lake/\n/target/\nsecrets.toml\n";

/// The project templates `ferry init --template` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Template {
    /// A small project: an example model and ten contacts to land.
    #[default]
    Basic,
    /// The GTM starter project `ferry demo` runs: staging, identity
    /// resolution, scoring, attribution, reporting, syncs.
    Gtm,
}

/// The example model (the same file as the repository's own example).
const EXAMPLE_MODEL: &str = include_str!("../../sql/init/contacts_by_country.sql");

/// Ten CRM contacts with the mess of real vendor data: country variants,
/// a nested company object, a list of tags, missing fields. The same file is
/// the repository's own sample (`tests/data/contacts.jsonl`).
pub const SAMPLE_CONTACTS: &str = include_str!("../../tests/data/contacts.jsonl");

/// The GTM starter project (`ferry init --template gtm`): the repository's
/// own `ferry.toml`, `models/` and the project's macros and singular tests
/// in `sql/`, embedded in the binary so `ferry demo` runs anywhere.
/// `init::tests::the_gtm_template_embeds_every_starter_file` keeps this list
/// equal to the files on disk.
pub const GTM_TEMPLATE: &[(&str, &str)] = &[
    ("ferry.toml", include_str!("../../ferry.toml")),
    (
        "models/intermediate/int_identity.sql",
        include_str!("../../models/intermediate/int_identity.sql"),
    ),
    (
        "models/intermediate/int_job_titles.sql",
        include_str!("../../models/intermediate/int_job_titles.sql"),
    ),
    (
        "models/intermediate/int_person_deals.sql",
        include_str!("../../models/intermediate/int_person_deals.sql"),
    ),
    (
        "models/intermediate/int_person_records.sql",
        include_str!("../../models/intermediate/int_person_records.sql"),
    ),
    (
        "models/intermediate/schema.yml",
        include_str!("../../models/intermediate/schema.yml"),
    ),
    (
        "models/marts/attribution_by_campaign.sql",
        include_str!("../../models/marts/attribution_by_campaign.sql"),
    ),
    (
        "models/marts/attribution_by_channel.sql",
        include_str!("../../models/marts/attribution_by_channel.sql"),
    ),
    (
        "models/marts/attribution_credits.sql",
        include_str!("../../models/marts/attribution_credits.sql"),
    ),
    (
        "models/marts/contact_scores.sql",
        include_str!("../../models/marts/contact_scores.sql"),
    ),
    (
        "models/marts/dim_accounts.sql",
        include_str!("../../models/marts/dim_accounts.sql"),
    ),
    (
        "models/marts/dim_people.sql",
        include_str!("../../models/marts/dim_people.sql"),
    ),
    (
        "models/marts/fct_touches.sql",
        include_str!("../../models/marts/fct_touches.sql"),
    ),
    (
        "models/marts/mql_segment.sql",
        include_str!("../../models/marts/mql_segment.sql"),
    ),
    (
        "models/marts/salesforce/salesforce_contact_scores.sql",
        include_str!("../../models/marts/salesforce/salesforce_contact_scores.sql"),
    ),
    (
        "models/marts/salesforce/salesforce_lead_scores.sql",
        include_str!("../../models/marts/salesforce/salesforce_lead_scores.sql"),
    ),
    (
        "models/marts/salesforce/salesforce_mql_contacts.sql",
        include_str!("../../models/marts/salesforce/salesforce_mql_contacts.sql"),
    ),
    (
        "models/marts/salesforce/salesforce_mql_leads.sql",
        include_str!("../../models/marts/salesforce/salesforce_mql_leads.sql"),
    ),
    (
        "models/marts/schema.yml",
        include_str!("../../models/marts/schema.yml"),
    ),
    (
        "models/reporting/rpt_enrichment_coverage.sql",
        include_str!("../../models/reporting/rpt_enrichment_coverage.sql"),
    ),
    (
        "models/reporting/rpt_funnel.sql",
        include_str!("../../models/reporting/rpt_funnel.sql"),
    ),
    (
        "models/reporting/rpt_reply_outcomes.sql",
        include_str!("../../models/reporting/rpt_reply_outcomes.sql"),
    ),
    (
        "models/reporting/rpt_source_quality.sql",
        include_str!("../../models/reporting/rpt_source_quality.sql"),
    ),
    (
        "models/reporting/rpt_sync_exceptions.sql",
        include_str!("../../models/reporting/rpt_sync_exceptions.sql"),
    ),
    (
        "models/reporting/schema.yml",
        include_str!("../../models/reporting/schema.yml"),
    ),
    (
        "models/seeds/channel_mapping.csv",
        include_str!("../../models/seeds/channel_mapping.csv"),
    ),
    (
        "models/seeds/country_aliases.csv",
        include_str!("../../models/seeds/country_aliases.csv"),
    ),
    (
        "models/seeds/engagement_weights.csv",
        include_str!("../../models/seeds/engagement_weights.csv"),
    ),
    (
        "models/seeds/free_email_domains.csv",
        include_str!("../../models/seeds/free_email_domains.csv"),
    ),
    (
        "models/seeds/icp_rules.csv",
        include_str!("../../models/seeds/icp_rules.csv"),
    ),
    (
        "models/seeds/industry_taxonomy.csv",
        include_str!("../../models/seeds/industry_taxonomy.csv"),
    ),
    (
        "models/seeds/personas.csv",
        include_str!("../../models/seeds/personas.csv"),
    ),
    (
        "models/seeds/schema.yml",
        include_str!("../../models/seeds/schema.yml"),
    ),
    (
        "models/seeds/survivorship.csv",
        include_str!("../../models/seeds/survivorship.csv"),
    ),
    (
        "models/seeds/territories.csv",
        include_str!("../../models/seeds/territories.csv"),
    ),
    (
        "models/seeds/title_functions.csv",
        include_str!("../../models/seeds/title_functions.csv"),
    ),
    (
        "models/seeds/title_seniority.csv",
        include_str!("../../models/seeds/title_seniority.csv"),
    ),
    (
        "models/seeds/us_states.csv",
        include_str!("../../models/seeds/us_states.csv"),
    ),
    (
        "models/staging/schema.yml",
        include_str!("../../models/staging/schema.yml"),
    ),
    (
        "models/staging/stg_hubspot__archived_contacts.sql",
        include_str!("../../models/staging/stg_hubspot__archived_contacts.sql"),
    ),
    (
        "models/staging/stg_hubspot__companies.sql",
        include_str!("../../models/staging/stg_hubspot__companies.sql"),
    ),
    (
        "models/staging/stg_hubspot__contacts.sql",
        include_str!("../../models/staging/stg_hubspot__contacts.sql"),
    ),
    (
        "models/staging/stg_hubspot__deal_contacts.sql",
        include_str!("../../models/staging/stg_hubspot__deal_contacts.sql"),
    ),
    (
        "models/staging/stg_hubspot__deals.sql",
        include_str!("../../models/staging/stg_hubspot__deals.sql"),
    ),
    (
        "models/staging/stg_marketing__campaigns.sql",
        include_str!("../../models/staging/stg_marketing__campaigns.sql"),
    ),
    (
        "models/staging/stg_marketing__leads.sql",
        include_str!("../../models/staging/stg_marketing__leads.sql"),
    ),
    (
        "models/staging/stg_marketing__touches.sql",
        include_str!("../../models/staging/stg_marketing__touches.sql"),
    ),
    (
        "models/staging/stg_salesforce__archived_contacts.sql",
        include_str!("../../models/staging/stg_salesforce__archived_contacts.sql"),
    ),
    (
        "models/staging/stg_salesforce__companies.sql",
        include_str!("../../models/staging/stg_salesforce__companies.sql"),
    ),
    (
        "models/staging/stg_salesforce__contacts.sql",
        include_str!("../../models/staging/stg_salesforce__contacts.sql"),
    ),
    (
        "models/staging/stg_salesforce__deal_contacts.sql",
        include_str!("../../models/staging/stg_salesforce__deal_contacts.sql"),
    ),
    (
        "models/staging/stg_salesforce__deals.sql",
        include_str!("../../models/staging/stg_salesforce__deals.sql"),
    ),
    (
        "models/staging/stg_sequencer__email_events.sql",
        include_str!("../../models/staging/stg_sequencer__email_events.sql"),
    ),
    (
        "sql/macros/gtm.sql",
        include_str!("../../sql/macros/gtm.sql"),
    ),
    (
        "sql/macros/latest_by.sql",
        include_str!("../../sql/macros/latest_by.sql"),
    ),
    (
        "sql/tests/attribution_credits_sum_to_one.sql",
        include_str!("../../sql/tests/attribution_credits_sum_to_one.sql"),
    ),
    (
        "sql/tests/attribution_credits_unique.sql",
        include_str!("../../sql/tests/attribution_credits_unique.sql"),
    ),
    (
        "sql/tests/funnel_stages_nest.sql",
        include_str!("../../sql/tests/funnel_stages_nest.sql"),
    ),
    (
        "sql/tests/lead_scores_in_range.sql",
        include_str!("../../sql/tests/lead_scores_in_range.sql"),
    ),
];

/// The files `ferry init` writes, relative to the project folder.
fn files(name: &str, template: Template) -> Vec<(&'static str, String)> {
    if template == Template::Gtm {
        let mut out: Vec<(&'static str, String)> = GTM_TEMPLATE
            .iter()
            .map(|(path, text)| {
                let text = if *path == "ferry.toml" {
                    text.replacen("name = \"gtm_starter\"", &format!("name = \"{name}\""), 1)
                } else {
                    text.to_string()
                };
                (*path, text)
            })
            .collect();
        out.push((".gitignore", GITIGNORE.to_string()));
        return out;
    }
    vec![
        ("ferry.toml", config(name)),
        (".gitignore", GITIGNORE.to_string()),
        ("models/contacts_by_country.sql", EXAMPLE_MODEL.to_string()),
        ("data/contacts.jsonl", SAMPLE_CONTACTS.to_string()),
    ]
}

fn config(name: &str) -> String {
    format!(
        "\
[project]
name = \"{name}\"

[lake]
# A folder (relative to this file) or a URL: s3://bucket/prefix, gs://..., az://..., memory://
url = \"lake\"
# Object store options; use ${{VAR}} for secrets (from the environment or secrets.toml).
# [lake.options]
# aws_region = \"eu-west-1\"
# aws_secret_access_key = \"${{AWS_SECRET_ACCESS_KEY}}\"

# Per-stream landing settings. schema = \"evolve\" (default) adds new columns and
# puts changed types in <column>__<type>; \"freeze\" quarantines batches that differ.
[sources.crm.streams.contacts]
schema = \"evolve\"
"
    )
}

/// Create a project in `dir` (created if missing). Returns the files written.
pub fn init(dir: &Path, name: Option<&str>, template: Template) -> Result<Vec<PathBuf>> {
    if dir.join(super::CONFIG_FILE).exists() {
        return Err(Error::Project(format!(
            "{} already has a {}: nothing was changed",
            dir.display(),
            super::CONFIG_FILE
        )));
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => project_name_from_dir(dir),
    };
    let mut written = Vec::new();
    for (rel, content) in files(&name, template) {
        let path = dir.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, content).map_err(|e| Error::io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

fn project_name_from_dir(dir: &Path) -> String {
    let base = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "ferry_project".to_string());
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "ferry_project".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::Project;

    #[test]
    fn init_writes_a_loadable_project_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let proj = dir.path().join("My Project");
        let written = init(&proj, None, Template::Basic).unwrap();
        assert_eq!(written.len(), 4);
        let p = Project::load(&proj).unwrap();
        assert_eq!(p.name, "my_project");
        let gi = std::fs::read_to_string(proj.join(".gitignore")).unwrap();
        assert!(gi.contains("/lake/") && gi.contains("/target/") && gi.contains("secrets.toml"));
        assert!(init(&proj, None, Template::Basic).is_err());
    }

    /// Every file of the starter project is in the binary, so `ferry init
    /// --template gtm` writes the project `ferry demo` runs.
    #[test]
    fn the_gtm_template_embeds_every_starter_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut on_disk = vec!["ferry.toml".to_string()];
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    out.push(
                        p.strip_prefix(root)
                            .unwrap()
                            .to_string_lossy()
                            .replace('\\', "/"),
                    );
                }
            }
        }
        for d in ["models", "sql/macros", "sql/tests"] {
            walk(root, &root.join(d), &mut on_disk);
        }
        on_disk.sort();
        let mut embedded: Vec<String> = GTM_TEMPLATE.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "update GTM_TEMPLATE in src/project/init.rs"
        );
        let dir = tempfile::tempdir().unwrap();
        let proj = dir.path().join("gtm");
        init(&proj, Some("acme_gtm"), Template::Gtm).unwrap();
        let p = Project::load(&proj).unwrap();
        assert_eq!(p.name, "acme_gtm");
        assert!(p.syncs.contains_key("contact_scores"));
    }

    #[test]
    fn sample_contacts_are_valid_json_lines() {
        for line in SAMPLE_CONTACTS.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v.is_object());
        }
    }
}
