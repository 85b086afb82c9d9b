//! dbt's artifacts, so tools that read them work: `target/manifest.json`
//! (every node with its checksum, config, dependencies; parent and child
//! maps) after the project loads, and `target/run_results.json` after
//! `ferry run`, `test` and `build`. Close to dbt's schemas (manifest v12,
//! run-results v6): the keys tools read are there with dbt's meanings.
//!
//! `--select state:modified --state DIR` compares the project with the
//! manifest in DIR: a node is `state:new` when DIR's manifest lacks it and
//! `state:modified` when new or its SQL checksum or config changed.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ModelProject, Workspace};
use crate::error::{Error, Result};

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Each node's unique id, by name (models, seeds, snapshots), as dbt
/// writes them: `model.<package>.<name>`.
pub fn unique_ids(project: &ModelProject) -> std::collections::BTreeMap<String, String> {
    let own = project
        .namespaces
        .last()
        .map(|(n, _)| n.clone())
        .unwrap_or_default();
    project
        .models
        .iter()
        .map(|m| {
            let pkg = m.package.clone().unwrap_or_else(|| own.clone());
            (m.name.clone(), format!("model.{pkg}.{}", m.name))
        })
        .chain(project.seeds.iter().map(|s| {
            let pkg = s.package.as_deref().unwrap_or(&own);
            (s.name.clone(), format!("seed.{pkg}.{}", s.name))
        }))
        .chain(
            project
                .snapshots
                .iter()
                .map(|s| (s.name.clone(), format!("snapshot.{own}.{}", s.name))),
        )
        .collect()
}

/// A node's `(schema, alias)`; an ephemeral model has none of its own.
fn relation_of(ws: &Workspace, name: &str, target_schema: &str) -> (String, String) {
    ws.project
        .relations
        .get(name)
        .cloned()
        .unwrap_or_else(|| (target_schema.to_string(), name.to_string()))
}

/// The manifest of `ws`.
pub fn manifest(ws: &Workspace) -> Value {
    let target = &ws.project.target;
    let schema = target["schema"].as_str().unwrap_or("main").to_string();
    let database = target["database"].as_str().unwrap_or("lake").to_string();
    let mut nodes = ws.project.graph["nodes"].clone();
    let ids = unique_ids(&ws.project);
    if let Some(map) = nodes.as_object_mut() {
        for m in &ws.project.models {
            let Some(node) = ids.get(&m.name).and_then(|id| map.get_mut(id)) else {
                continue;
            };
            node["raw_code"] = json!(m.sql);
            node["language"] = json!("sql");
            node["checksum"] = json!({"name": "sha256", "checksum": sha256(&m.sql)});
            let (schema, alias) = relation_of(ws, &m.name, &schema);
            node["schema"] = json!(schema);
            node["database"] = json!(database);
            node["alias"] = json!(alias);
            node["relation_name"] = json!(format!("\"{database}\".\"{schema}\".\"{alias}\""));
            let mut fqn = vec![node["package_name"].clone()];
            let folders: Vec<&str> = m.path.split('/').collect();
            for f in folders.iter().skip(1).take(folders.len().saturating_sub(2)) {
                fqn.push(json!(f));
            }
            fqn.push(json!(m.name));
            node["fqn"] = json!(fqn);
        }
        for s in &ws.project.seeds {
            if let Some(node) = ids.get(&s.name).and_then(|id| map.get_mut(id)) {
                // As dbt: a seed over 1 MiB is checksummed by its path, so
                // every command does not read it whole.
                let size = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
                node["checksum"] = if size > 1 << 20 {
                    json!({"name": "path", "checksum": s.path.display().to_string()})
                } else {
                    let text = std::fs::read_to_string(&s.path).unwrap_or_default();
                    json!({"name": "sha256", "checksum": sha256(&text)})
                };
                let (schema, alias) = relation_of(ws, &s.name, &schema);
                node["schema"] = json!(schema);
                node["database"] = json!(database);
                node["alias"] = json!(alias);
                node["relation_name"] = json!(format!("\"{database}\".\"{schema}\".\"{alias}\""));
            }
        }
        for s in &ws.project.snapshots {
            if let Some(node) = ids.get(&s.name).and_then(|id| map.get_mut(id)) {
                let (schema, alias) = relation_of(ws, &s.name, &schema);
                node["schema"] = json!(schema);
                node["database"] = json!(database);
                node["alias"] = json!(alias);
                node["relation_name"] = json!(format!("\"{database}\".\"{schema}\".\"{alias}\""));
                node["raw_code"] = json!(s.sql);
                node["checksum"] = json!({"name": "sha256", "checksum": sha256(&s.sql)});
            }
        }
    }
    let mut parent_map = serde_json::Map::new();
    let mut child_map = serde_json::Map::new();
    for (name, id) in &ids {
        let parents: Vec<String> = ws
            .dag
            .parents
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|p| ids.get(p).cloned())
            .collect();
        let children: Vec<String> = ws
            .dag
            .children
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|c| ids.get(c).cloned())
            .collect();
        parent_map.insert(id.clone(), json!(parents));
        child_map.insert(id.clone(), json!(children));
    }
    json!({
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/manifest/v12.json",
            "dbt_version": format!("ferry-{}", env!("CARGO_PKG_VERSION")),
            "generated_at": Utc::now().to_rfc3339(),
            "invocation_id": uuid::Uuid::now_v7().to_string(),
            "adapter_type": "datafusion",
            "project_name": ws.project.namespaces.last().map(|(n, _)| n.clone()),
        },
        "nodes": nodes,
        "sources": ws.project.graph["sources"],
        "macros": {},
        "exposures": {},
        "metrics": {},
        "groups": {},
        "selectors": {},
        "disabled": {},
        "parent_map": parent_map,
        "child_map": child_map,
        "semantic_models": {},
        "unit_tests": ws.project.unit_tests.iter().map(|t| (format!("unit_test.{}.{}.{}", ws.project.namespaces.last().map(|(n, _)| n.as_str()).unwrap_or(""), t.model, t.name), json!({"name": t.name, "model": t.model, "resource_type": "unit_test"}))).collect::<serde_json::Map<_, _>>(),
    })
}

/// Write `value` to `dir/target/<file>` (whole or not at all).
pub fn write(dir: &Path, file: &str, value: &Value) -> Result<()> {
    let target = dir.join("target");
    std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    let path = target.join(file);
    let tmp = target.join(format!(".{file}.tmp"));
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// One result for `run_results.json`.
#[derive(Debug, Clone)]
pub struct NodeResult {
    pub unique_id: String,
    /// dbt's words: `success`, `error`, `skipped` (models); `pass`,
    /// `fail`, `warn`, `error` (tests).
    pub status: &'static str,
    pub started_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    pub seconds: f64,
    pub message: Option<String>,
    pub failures: Option<u64>,
    pub rows: Option<u64>,
}

/// `target/run_results.json` for the command `which`.
pub fn run_results(which: &str, results: &[NodeResult], elapsed: f64) -> Value {
    json!({
        "metadata": {
            "dbt_schema_version": "https://schemas.getdbt.com/dbt/run-results/v6.json",
            "dbt_version": format!("ferry-{}", env!("CARGO_PKG_VERSION")),
            "generated_at": Utc::now().to_rfc3339(),
            "invocation_id": uuid::Uuid::now_v7().to_string(),
        },
        "elapsed_time": elapsed,
        "args": {"which": which},
        "results": results.iter().map(|r| json!({
            "unique_id": r.unique_id,
            "status": r.status,
            "timing": [{"name": "execute", "started_at": r.started_at.to_rfc3339(), "completed_at": r.completed_at.to_rfc3339()}],
            "thread_id": "Thread-1",
            "execution_time": r.seconds,
            "adapter_response": {"_message": "OK", "rows_affected": r.rows},
            "message": r.message,
            "failures": r.failures,
            "compiled": true,
        })).collect::<Vec<_>>(),
    })
}

/// The names `state:modified` or `state:new` select against the manifest
/// saved in `state_dir`.
pub fn state_selection(ws: &Workspace, method: &str, state_dir: &Path) -> Result<BTreeSet<String>> {
    let path = state_dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Input(format!(
            "--state {}: cannot read {} ({e}); point --state at the target/ folder of the run to compare with",
            state_dir.display(),
            path.display()
        ))
    })?;
    let old: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: not a manifest: {e}", path.display())))?;
    let now = manifest(ws);
    let ids = unique_ids(&ws.project);
    let mut out = BTreeSet::new();
    for (name, id) in ids {
        let before = &old["nodes"][&id];
        let after = &now["nodes"][&id];
        let new = before.is_null();
        let modified = new
            || before["checksum"]["checksum"] != after["checksum"]["checksum"]
            || before["config"] != after["config"];
        let chosen = match method {
            "new" => new,
            "modified" => modified,
            other => {
                return Err(Error::Input(format!(
                    "selector state:{other}: ferry knows state:modified and state:new"
                )));
            }
        };
        if chosen {
            out.insert(name);
        }
    }
    Ok(out)
}
