//! Reading a dbt project (`dbt_project.yml`, no `ferry.toml`) as a ferry
//! project, so `ferry seed && ferry run && ferry test --project-dir DIR`
//! works on it unchanged.
//!
//! Read: `name`, `model-paths`, `seed-paths`, `macro-paths`, `test-paths`,
//! `vars` (global, or under the project's name), and the `models:` tree of
//! folder configs (`+materialized`, `+tags`, ... at any folder depth). The
//! lake is the project's own `lake/` folder (or `FERRY_LAKE`). Other keys
//! (profiles, hooks, packages) do not change what ferry does.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;

use super::{LakeConfig, Paths, Project};
use crate::error::{Error, Result};

/// The file that marks a dbt project.
pub const DBT_PROJECT_FILE: &str = "dbt_project.yml";

#[derive(Debug, Deserialize)]
struct DbtProject {
    name: String,
    #[serde(default, rename = "model-paths", alias = "source-paths")]
    model_paths: Option<Vec<String>>,
    #[serde(default, rename = "seed-paths", alias = "data-paths")]
    seed_paths: Option<Vec<String>>,
    #[serde(default, rename = "macro-paths")]
    macro_paths: Option<Vec<String>>,
    #[serde(default, rename = "test-paths")]
    test_paths: Option<Vec<String>>,
    #[serde(default, rename = "snapshot-paths")]
    snapshot_paths: Option<Vec<String>>,
    #[serde(default)]
    vars: BTreeMap<String, Yaml>,
    #[serde(default)]
    models: Option<Yaml>,
}

/// Settings dbt allows without a `+` in the `models:` tree.
const PLAIN_CONFIGS: &[&str] = &[
    "materialized",
    "tags",
    "enabled",
    "unique_key",
    "incremental_strategy",
    "schema",
    "database",
    "alias",
    "docs",
    "meta",
    "persist_docs",
    "full_refresh",
    "on_schema_change",
    "contract",
    "grants",
];

pub fn load(dir: &Path, lake_override: Option<String>) -> Result<Project> {
    let file = dir.join(DBT_PROJECT_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| Error::user_file(&file, e))?;
    let p: DbtProject = serde_yaml_ng::from_str(&text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(":{}:{}", l.line(), l.column()))
            .unwrap_or_default();
        Error::Input(format!("{}{at}: {e}", file.display()))
    })?;

    let mut vars = BTreeMap::new();
    for (k, v) in &p.vars {
        match v {
            Yaml::Mapping(m) if k == &p.name => {
                for (ik, iv) in m {
                    if let Some(ik) = ik.as_str() {
                        vars.insert(ik.to_string(), yaml_to_json(iv));
                    }
                }
            }
            _ => {
                vars.insert(k.clone(), yaml_to_json(v));
            }
        }
    }

    let model_configs = folder_configs(p.models.as_ref(), &p.name);

    let or = |v: &Option<Vec<String>>, d: &[&str]| {
        v.clone()
            .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
    };
    Ok(Project {
        engine: Default::default(),
        destinations: BTreeMap::new(),
        extract: BTreeMap::new(),
        webhooks: BTreeMap::new(),
        schedules: BTreeMap::new(),
        alerts: Default::default(),
        syncs: BTreeMap::new(),
        dir: dir.to_path_buf(),
        name: p.name.clone(),
        lake: LakeConfig {
            url: lake_override.unwrap_or_else(|| "lake".into()),
            options: BTreeMap::new(),
        },
        sources: BTreeMap::new(),
        model_configs,
        paths: Paths {
            models: or(&p.model_paths, &["models"]),
            seeds: or(&p.seed_paths, &["seeds"]),
            macros: or(&p.macro_paths, &["macros"]),
            tests: or(&p.test_paths, &["tests"]),
            snapshots: or(&p.snapshot_paths, &["snapshots"]),
        },
        vars,
        target: None,
        require_clean_git: false,
    })
}

/// The folder settings a `models:` (or `seeds:`) tree gives the package or
/// project `name`: top-level settings (every model), then its own subtree.
pub fn folder_configs(
    tree: Option<&Yaml>,
    name: &str,
) -> Vec<(Vec<String>, BTreeMap<String, Yaml>)> {
    let mut out = Vec::new();
    if let Some(Yaml::Mapping(tree)) = tree {
        for (k, v) in tree {
            // The named project's models; other keys configure other packages.
            if k.as_str() == Some(name) {
                walk(v, &mut Vec::new(), &mut out);
            } else if let (Some(k), false) = (k.as_str(), v.is_mapping())
                && let Some(key) = config_key(k)
            {
                let mut m = BTreeMap::new();
                m.insert(key, v.clone());
                out.insert(0, (Vec::new(), m));
            }
        }
    }
    out
}

/// A package's view of `vars:` from a `dbt_project.yml`: the global ones,
/// with those under the package's name over them.
pub fn scoped_vars(
    vars: &BTreeMap<String, Yaml>,
    name: &str,
    all: &[String],
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for (k, v) in vars {
        if !(v.is_mapping() && all.contains(k)) {
            out.insert(k.clone(), yaml_to_json(v));
        }
    }
    if let Some(Yaml::Mapping(m)) = vars.get(name) {
        for (ik, iv) in m {
            if let Some(ik) = ik.as_str() {
                out.insert(ik.to_string(), yaml_to_json(iv));
            }
        }
    }
    out
}

fn config_key(k: &str) -> Option<String> {
    if let Some(stripped) = k.strip_prefix('+') {
        Some(stripped.to_string())
    } else if PLAIN_CONFIGS.contains(&k) {
        Some(k.to_string())
    } else {
        None
    }
}

/// Collect `(folder path, settings)` from a `models:` subtree.
fn walk(node: &Yaml, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, BTreeMap<String, Yaml>)>) {
    let Yaml::Mapping(m) = node else { return };
    let mut here = BTreeMap::new();
    let mut children = Vec::new();
    for (k, v) in m {
        let Some(k) = k.as_str() else { continue };
        match config_key(k) {
            Some(key) if k.starts_with('+') || !v.is_mapping() || key == "contract" => {
                here.insert(key, v.clone());
            }
            _ => children.push((k.to_string(), v)),
        }
    }
    if !here.is_empty() {
        out.push((path.clone(), here));
    }
    for (k, v) in children {
        path.push(k);
        walk(v, path, out);
        path.pop();
    }
}

fn yaml_to_json(v: &Yaml) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_vars_and_the_folder_config_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DBT_PROJECT_FILE),
            "name: jaffle\nversion: '1.0'\nprofile: jaffle\nmodel-paths: [\"models\"]\n\
             seed-paths: [\"seeds\"]\nvars:\n  start: '2020-01-01'\n  jaffle:\n    depth: 3\n\
             models:\n  jaffle:\n    +materialized: view\n    marts:\n      +materialized: table\n      \
             finance:\n        +tags: [finance]\n",
        )
        .unwrap();
        let p = Project::load(dir.path()).unwrap();
        assert_eq!(p.name, "jaffle");
        assert_eq!(p.lake.url, "lake");
        assert_eq!(p.paths.tests, vec!["tests".to_string()]);
        assert_eq!(p.vars["start"], serde_json::json!("2020-01-01"));
        assert_eq!(p.vars["depth"], serde_json::json!(3));
        let folders: Vec<&Vec<String>> = p.model_configs.iter().map(|(f, _)| f).collect();
        assert_eq!(
            folders,
            vec![
                &Vec::<String>::new(),
                &vec!["marts".to_string()],
                &vec!["marts".to_string(), "finance".to_string()]
            ]
        );
    }
}
