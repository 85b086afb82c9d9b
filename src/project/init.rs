//! `ferry init DIR`: a new project that works at once.
//!
//! Writes `ferry.toml`, an example model, a small sample of CRM contacts to
//! land, and a `.gitignore` that keeps the local lake and `secrets.toml` out
//! of git. Never overwrites an existing file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const GITIGNORE: &str =
    "# ferry: the local lake and secrets never go into git\n/lake/\nsecrets.toml\n";

/// The example model (the same file as the repository's own example).
const EXAMPLE_MODEL: &str = include_str!("../../sql/init/contacts_by_country.sql");

/// Ten CRM contacts with the mess of real vendor data: country variants,
/// a nested company object, a list of tags, missing fields. The same file is
/// the repository's own sample (`tests/data/contacts.jsonl`).
pub const SAMPLE_CONTACTS: &str = include_str!("../../tests/data/contacts.jsonl");

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
