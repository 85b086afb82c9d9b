//! `ferry init DIR`: a new project that works at once.
//!
//! Writes `ferry.toml`, an example model, a small sample of CRM contacts to
//! land, and a `.gitignore` that keeps the local lake and `secrets.toml` out
//! of git. Never overwrites an existing file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const GITIGNORE: &str =
    "# ferry: the local lake and secrets never go into git\n/lake/\nsecrets.toml\n";

const EXAMPLE_MODEL: &str = "\
-- An example model: contacts per country from the landed CRM contacts.
-- Land the sample first: ferry land crm.contacts data/contacts.jsonl
select
    country,
    count(*) as contacts
from {{ source('crm', 'contacts') }}
group by country
";

/// A dozen CRM contacts with the mess of real vendor data: country variants,
/// a nested company object, a list of tags, missing fields.
pub const SAMPLE_CONTACTS: &str = r#"{"id": 101, "email": "Ana.Lopez@Northwind.io", "first_name": "Ana", "last_name": "Lopez", "title": "VP of Marketing", "country": "US", "company": {"name": "Northwind", "domain": "northwind.io", "employees": 420}, "lead_score": 71, "tags": ["webinar", "pricing"], "updated_at": "2026-11-02T09:14:00Z"}
{"id": 102, "email": "bkim@globex.com", "first_name": "Ben", "last_name": "Kim", "title": "Vice President, Marketing", "country": "USA", "company": {"name": "Globex", "domain": "www.globex.com", "employees": 12000}, "lead_score": 55, "tags": [], "updated_at": "2026-11-03T16:40:00Z"}
{"id": 103, "email": "c.dubois@initech.fr", "first_name": "Claire", "last_name": "Dubois", "title": "Head of Sales", "country": "France", "company": {"name": "Initech", "domain": "initech.fr", "employees": 85}, "lead_score": 38.5, "updated_at": "2026-11-04T08:05:00Z"}
{"id": 104, "email": "dev.patel@gmail.com", "first_name": "Dev", "last_name": "Patel", "title": "Founder", "country": "U.S.A.", "company": {"name": "Patel Labs"}, "lead_score": 12, "updated_at": "2026-11-04T10:22:00Z"}
{"id": 105, "email": "emma@umbrella.co.uk", "first_name": "Emma", "last_name": "Stone", "title": "Marketing Manager", "country": "United Kingdom", "company": {"name": "Umbrella", "domain": "https://umbrella.co.uk/about", "employees": 2300}, "lead_score": 64, "tags": ["event"], "updated_at": "2026-11-05T13:00:00Z"}
{"id": 106, "email": "f.muller@acme.de", "first_name": "Felix", "last_name": "Müller", "title": "CTO", "country": "Germany", "company": {"name": "Acme GmbH", "domain": "acme.de", "employees": 150}, "lead_score": 47, "updated_at": "2026-11-06T07:45:00Z"}
{"id": 107, "email": "gina@northwind.io", "first_name": "Gina", "last_name": "Rossi", "title": "VP Marketing", "country": "United States", "company": {"name": "Northwind", "domain": "northwind.io", "employees": 420}, "lead_score": 83, "tags": ["pricing"], "updated_at": "2026-11-07T11:30:00Z"}
{"id": 108, "email": "hiro@soylent.jp", "first_name": "Hiro", "last_name": "Tanaka", "title": "Sales Director", "country": "Japan", "company": {"name": "Soylent", "domain": "soylent.jp", "employees": 5100}, "lead_score": 29, "updated_at": "2026-11-08T02:10:00Z"}
{"id": 109, "email": "ivy@hooli.com", "first_name": "Ivy", "last_name": "Chen", "title": "Demand Gen Lead", "country": "us", "company": {"name": "Hooli", "domain": "hooli.com", "employees": 30000}, "lead_score": 91, "tags": ["webinar"], "updated_at": "2026-11-09T18:00:00Z"}
{"id": 110, "email": "jon@yahoo.com", "first_name": "Jon", "last_name": "Berg", "country": "Sweden", "company": {"name": "Berg AB", "domain": null}, "lead_score": null, "updated_at": "2026-11-10T09:00:00Z"}
"#;

/// The files `ferry init` writes, relative to the project folder.
fn files(name: &str) -> Vec<(&'static str, String)> {
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
pub fn init(dir: &Path, name: Option<&str>) -> Result<Vec<PathBuf>> {
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
    for (rel, content) in files(&name) {
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
        let written = init(&proj, None).unwrap();
        assert_eq!(written.len(), 4);
        let p = Project::load(&proj).unwrap();
        assert_eq!(p.name, "my_project");
        let gi = std::fs::read_to_string(proj.join(".gitignore")).unwrap();
        assert!(gi.contains("/lake/") && gi.contains("secrets.toml"));
        assert!(init(&proj, None).is_err());
    }

    #[test]
    fn sample_contacts_are_valid_json_lines() {
        for line in SAMPLE_CONTACTS.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v.is_object());
        }
    }
}
