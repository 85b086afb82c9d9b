//! Relation names: the `<schema>.<alias>` dbt would create for each seed,
//! model and snapshot.
//!
//! A node's `+schema` and `+alias` go through the project's own
//! `generate_schema_name` / `generate_alias_name` macros when it defines
//! them, else through dbt's defaults: `target.schema`, or
//! `<target.schema>_<custom>` when a custom schema is set; the alias, or the
//! node's name. The lake path of a table stays `models/<name>` (or
//! `seeds/<name>`); sessions register each table under its relation name
//! as well, so `ferry query "select * from raw.raw_orders"` and
//! `source('ecom', 'raw_orders')` (declared with `schema: raw`) read what
//! dbt would have created as `raw.raw_orders`.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::listing::ListingTable;
use datafusion::execution::context::SessionContext;

use super::project::{Model, ModelConfig, ModelProject, defines_macro};
use super::render::{self, Resolver};
use crate::error::{Error, Result};
use crate::project::RESERVED_SCHEMA;

/// What the naming macros see of a node (dbt's `node`).
pub struct Node<'a> {
    pub name: &'a str,
    /// `model`, `seed` or `snapshot`.
    pub resource_type: &'a str,
    pub package: Option<&'a str>,
    /// The file that declares it, for errors.
    pub path: &'a str,
    pub schema: Option<&'a str>,
    pub alias: Option<&'a str>,
    pub materialized: &'a str,
    pub tags: &'a [String],
}

/// The project's own macro of that name (not one of ferry's built-ins).
fn overridden(project: &ModelProject, name: &str) -> bool {
    project
        .macros
        .iter()
        .any(|(path, text)| !path.starts_with("<ferry>") && defines_macro(text, name))
}

/// `(schema, alias)` of `node`, lowercased (DuckDB and DataFusion fold
/// unquoted names).
pub fn relation(project: &ModelProject, node: &Node<'_>) -> Result<(String, String)> {
    let target_schema = project.target["schema"]
        .as_str()
        .unwrap_or("main")
        .to_string();
    let schema = if overridden(project, "generate_schema_name") {
        call(project, node, "generate_schema_name", node.schema)?
    } else {
        match node.schema {
            None => target_schema,
            Some(custom) => format!("{target_schema}_{}", custom.trim()),
        }
    };
    let alias = if overridden(project, "generate_alias_name") {
        call(project, node, "generate_alias_name", node.alias)?
    } else {
        node.alias.unwrap_or(node.name).trim().to_string()
    };
    let (schema, alias) = (schema.to_lowercase(), alias.to_lowercase());
    let origin = format!("{} ({} {})", node.path, node.resource_type, node.name);
    for (what, value) in [("schema", &schema), ("alias", &alias)] {
        if value.is_empty() || value.contains('.') || value.contains('"') {
            return Err(Error::Input(format!(
                "{origin}: its {what} comes out as {value:?}; a {what} must be a non-empty \
                 name without dots or quotes: fix +{what} or the project's generate_{what}_name macro"
            )));
        }
    }
    if schema == RESERVED_SCHEMA {
        return Err(Error::Input(format!(
            "{origin}: its schema comes out as {RESERVED_SCHEMA}, which holds ferry's own \
             tables: choose another +schema"
        )));
    }
    Ok((schema, alias))
}

/// Render `{{ macro_name(custom, node) }}` with the project's macros.
fn call(
    project: &ModelProject,
    node: &Node<'_>,
    macro_name: &str,
    custom: Option<&str>,
) -> Result<String> {
    let node_json = serde_json::json!({
        "name": node.name,
        "resource_type": node.resource_type,
        "package_name": node.package.unwrap_or_else(|| project.namespaces.last().map(|(n, _)| n.as_str()).unwrap_or("")),
        "original_file_path": node.path,
        "path": node.path,
        "tags": node.tags,
        "fqn": [node.package.unwrap_or(""), node.name],
        "config": {
            "schema": node.schema,
            "alias": node.alias,
            "materialized": node.materialized,
            "tags": node.tags,
        },
    });
    // Both as Jinja string literals: JSON's string escapes are Jinja's.
    let literal = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let custom = custom.map(literal).unwrap_or_else(|| "none".into());
    let sql = format!(
        "{{{{ {macro_name}({custom}, fromjson({})) }}}}",
        literal(&node_json.to_string())
    );
    let pseudo = Model {
        name: node.name.to_string(),
        path: node.path.to_string(),
        sql,
        config: ModelConfig::default(),
        description: None,
        columns: Vec::new(),
        package: node.package.map(str::to_string),
    };
    let identity: Resolver = Arc::new(|n: &str| n.to_string());
    let out = render::render(&pseudo, &project.render_context(false, identity)).map_err(|e| {
        Error::Input(format!(
            "the project's {macro_name} macro failed for {} {}: {e}",
            node.resource_type, node.name
        ))
    })?;
    Ok(out.sql.trim().to_string())
}

/// Compute the relation of every seed (models and snapshots are named once
/// their `config(...)` is known: [`name_models`]).
pub fn name_seeds(project: &mut ModelProject) -> Result<()> {
    let mut named = BTreeMap::new();
    for s in &project.seeds {
        let path = s.path.display().to_string();
        let node = Node {
            name: &s.name,
            resource_type: "seed",
            package: s.package.as_deref(),
            path: &path,
            schema: s.schema.as_deref(),
            alias: s.alias.as_deref(),
            materialized: "seed",
            tags: &[],
        };
        named.insert(s.name.clone(), relation(project, &node)?);
    }
    project.relations.extend(named);
    Ok(())
}

/// Compute the relation of every persisted model and every snapshot
/// (`snapshot_config` gives a snapshot's settings, its block's `config(...)`
/// included), and refuse two nodes that would be the same relation.
pub fn name_models(
    project: &mut ModelProject,
    snapshot_config: &BTreeMap<String, BTreeMap<String, serde_yaml_ng::Value>>,
) -> Result<()> {
    let mut named = BTreeMap::new();
    for m in project.models.iter().filter(|m| {
        m.config.materialized.persisted() || m.config.materialized == super::Materialized::View
    }) {
        let node = Node {
            name: &m.name,
            resource_type: "model",
            package: m.package.as_deref(),
            path: &m.path,
            schema: m.config.schema.as_deref(),
            alias: m.config.alias.as_deref(),
            materialized: m.config.materialized.as_str(),
            tags: &m.config.tags,
        };
        named.insert(m.name.clone(), relation(project, &node)?);
    }
    for s in &project.snapshots {
        let config = snapshot_config.get(&s.name).unwrap_or(&s.config);
        let text = |k: &str| {
            config
                .get(k)
                .or_else(|| config.get(&format!("+{k}")))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let alias = text("alias");
        // A legacy `target_schema` is used as it is (dbt does not pass it
        // through generate_schema_name).
        let rel = match text("target_schema") {
            Some(schema) => (
                schema.trim().to_lowercase(),
                alias
                    .clone()
                    .unwrap_or_else(|| s.name.clone())
                    .to_lowercase(),
            ),
            None => {
                let schema = text("schema");
                let node = Node {
                    name: &s.name,
                    resource_type: "snapshot",
                    package: None,
                    path: &s.path,
                    schema: schema.as_deref(),
                    alias: alias.as_deref(),
                    materialized: "snapshot",
                    tags: &[],
                };
                relation(project, &node)?
            }
        };
        named.insert(s.name.clone(), rel);
    }
    project.relations.extend(named);
    // Two nodes in one relation: dbt refuses it too.
    let mut seen: BTreeMap<&(String, String), &String> = BTreeMap::new();
    for (name, rel) in &project.relations {
        if let Some(first) = seen.insert(rel, name) {
            return Err(Error::Input(format!(
                "{first} and {name} would both be {}.{}: give one of them another +alias or +schema",
                rel.0, rel.1
            )));
        }
    }
    Ok(())
}

/// Register every node already in `ctx` under its bare name also under its
/// relation name (`schema.alias`), creating the schema. A lake stream of
/// that name gives way (with a warning): the relation is what dbt would
/// have created there.
pub async fn register(ctx: &SessionContext, project: &ModelProject) -> Result<()> {
    for name in project.relations.keys() {
        register_one(ctx, project, name).await?;
    }
    Ok(())
}

/// [`register`] for the node `name` (after it is built or re-registered).
pub async fn register_one(ctx: &SessionContext, project: &ModelProject, name: &str) -> Result<()> {
    let Some((schema, alias)) = project.relations.get(name) else {
        return Ok(());
    };
    // In the default schema the bare name is the relation already, and an
    // alias must not take another node's name.
    let default_schema = ctx
        .state()
        .config()
        .options()
        .catalog
        .default_schema
        .clone();
    if *schema == default_schema
        && (alias == name || project.relations.contains_key(alias.as_str()))
    {
        return Ok(());
    }
    let Ok(table) = ctx.table_provider(name).await else {
        return Ok(());
    };
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| Error::Internal("default catalog missing".into()))?;
    if catalog.schema(schema).is_none() {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    let full = format!("{schema}.{alias}");
    if let Ok(existing) = ctx.table_provider(full.as_str()).await {
        if existing.downcast_ref::<ListingTable>().is_some() {
            tracing::warn!(
                "{full} is both a lake stream and where {name} is created (as dbt would \
                 create it): {full} reads {name}"
            );
        }
        ctx.deregister_table(full.as_str())?;
    }
    ctx.register_table(full.as_str(), table)?;
    Ok(())
}
