//! Snapshots (`ferry snapshot`): slowly changing dimensions of type 2, as
//! dbt builds them. Each run compares a query (the snapshot's SQL, or its
//! `relation`) with the current rows of the snapshot table and records
//! changes as new versions: the changed row's current version gets
//! `dbt_valid_to`, a new version starts at `dbt_valid_from`.
//!
//! Declared either as dbt 1.9 YAML (`snapshots:` in a `.yml` under
//! `snapshots/` with `relation: ref('x')` or `source('s', 't')`) or as a
//! legacy `{% snapshot name %} {{ config(...) }} select ... {% endsnapshot %}`
//! block in a `.sql` file. Config: `unique_key` (a column or a list),
//! `strategy` (`timestamp` with `updated_at`, or `check` with `check_cols`:
//! `all` or a list), `hard_deletes` (`ignore`, `invalidate`, `new_record`;
//! legacy `invalidate_hard_deletes: true`), `dbt_valid_to_current`.
//!
//! The table is a Delta table under `snapshots/<name>` in the lake, changed
//! by one MERGE per run on `dbt_scd_id` (dbt's staging-then-merge): rows
//! whose current version changed or vanished are closed, new versions are
//! inserted, all in one commit, so a failed run changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use datafusion::execution::context::SessionContext;
use serde_yaml_ng::Value as Yaml;

use super::delta::{self, SNAPSHOTS};
use super::project::{Model, ModelConfig, ModelProject, strings};
use super::render::{self, Resolver};
use super::{Workspace, model_error, query_only};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// How changes are detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// A row changed when its `updated_at` is newer than the current version's.
    Timestamp { updated_at: String },
    /// A row changed when any of these columns differ (`None`: all columns).
    Check { columns: Option<Vec<String>> },
}

/// What happens to current rows whose key is gone from the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HardDeletes {
    #[default]
    Ignore,
    /// Their current version is closed.
    Invalidate,
    /// Closed, and a version with `dbt_is_deleted = 'True'` is inserted.
    NewRecord,
}

/// A snapshot, declared in YAML or as a `{% snapshot %}` block.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    /// The file declaring it.
    pub path: String,
    /// Jinja SQL of the query (the block's body, or `select * from {{ relation }}`).
    pub sql: String,
    /// Config from YAML (a block's `config(...)` is read when it renders).
    pub config: BTreeMap<String, Yaml>,
}

/// A snapshot's resolved config.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub unique_key: Vec<String>,
    pub strategy: Strategy,
    pub hard_deletes: HardDeletes,
    /// SQL for `dbt_valid_to` of current rows (default NULL).
    pub valid_to_current: Option<String>,
    pub enabled: bool,
}

/// Resolve `config` (YAML settings, then the block's `config(...)`).
pub fn resolve(config: &BTreeMap<String, Yaml>, origin: &str) -> Result<Resolved> {
    let bad = |what: String| Error::Input(format!("{origin}: {what}"));
    let get = |k: &str| config.get(k).or_else(|| config.get(&format!("+{k}")));
    let unique_key = get("unique_key")
        .and_then(strings)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("a snapshot needs unique_key: a column, or a list of them".into()))?;
    let strategy = match get("strategy").and_then(Yaml::as_str) {
        Some("timestamp") => Strategy::Timestamp {
            updated_at: get("updated_at")
                .and_then(Yaml::as_str)
                .ok_or_else(|| bad("strategy timestamp needs updated_at: <column>".into()))?
                .to_string(),
        },
        Some("check") => Strategy::Check {
            columns: match get("check_cols") {
                Some(Yaml::String(s)) if s == "all" => None,
                Some(v) => Some(
                    strings(v)
                        .ok_or_else(|| bad("check_cols is all or a list of columns".into()))?,
                ),
                None => {
                    return Err(bad(
                        "strategy check needs check_cols: all or [columns]".into()
                    ));
                }
            },
        },
        Some(other) => {
            return Err(bad(format!(
                "strategy {other:?}; expected timestamp or check"
            )));
        }
        None => return Err(bad("a snapshot needs strategy: timestamp or check".into())),
    };
    let hard_deletes = match get("hard_deletes").and_then(Yaml::as_str) {
        Some("ignore") => HardDeletes::Ignore,
        Some("invalidate") => HardDeletes::Invalidate,
        Some("new_record") => HardDeletes::NewRecord,
        Some(other) => {
            return Err(bad(format!(
                "hard_deletes {other:?}; expected ignore, invalidate or new_record"
            )));
        }
        None if get("invalidate_hard_deletes").and_then(Yaml::as_bool) == Some(true) => {
            HardDeletes::Invalidate
        }
        None => HardDeletes::Ignore,
    };
    Ok(Resolved {
        unique_key,
        strategy,
        hard_deletes,
        valid_to_current: get("dbt_valid_to_current")
            .and_then(Yaml::as_str)
            .map(str::to_string),
        enabled: get("enabled").and_then(Yaml::as_bool).unwrap_or(true),
    })
}

/// `{% snapshot name %}...{% endsnapshot %}` blocks in `text`: (name, body).
pub fn blocks(text: &str, path: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = find_tag(rest, "snapshot") {
        let (open_end, name) = {
            let after = &rest[start..];
            let close = after
                .find("%}")
                .ok_or_else(|| Error::Input(format!("{path}: unclosed {{% snapshot %}} tag")))?;
            let tag = &after[2..close];
            let name = tag
                .trim_matches(['-', ' ', '\n', '\t'])
                .strip_prefix("snapshot")
                .map(str::trim)
                .unwrap_or_default()
                .to_string();
            (start + close + 2, name)
        };
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(Error::Input(format!(
                "{path}: {{% snapshot %}} needs a name: {{% snapshot orders_snapshot %}}"
            )));
        }
        let body_and_rest = &rest[open_end..];
        let end = find_tag(body_and_rest, "endsnapshot").ok_or_else(|| {
            Error::Input(format!(
                "{path}: snapshot {name} has no {{% endsnapshot %}}"
            ))
        })?;
        let body = body_and_rest[..end].to_string();
        let close = body_and_rest[end..]
            .find("%}")
            .map(|c| end + c + 2)
            .unwrap_or(body_and_rest.len());
        out.push((name, body));
        rest = &body_and_rest[close..];
    }
    Ok(out)
}

/// Byte offset of the next `{% word` / `{%- word` tag.
fn find_tag(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("{%") {
        let at = from + i;
        let inner = text[at + 2..].trim_start_matches('-').trim_start();
        if let Some(after) = inner.strip_prefix(word)
            && after.starts_with(|c: char| c.is_whitespace() || c == '%' || c == '-')
        {
            return Some(at);
        }
        from = at + 2;
    }
    None
}

/// One snapshot run.
#[derive(Debug, Clone)]
pub struct SnapshotResult {
    pub name: String,
    /// Rows in the table after the run.
    pub rows: u64,
    /// New versions inserted (new keys and changes).
    pub inserted: u64,
    /// Current versions closed (changes and deletions).
    pub closed: u64,
    pub seconds: f64,
}

fn q(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\"\""))
}

/// The snapshot's query, rendered like a model (ref, source, vars, macros).
pub(crate) fn render_query(
    project: &ModelProject,
    snap: &Snapshot,
) -> Result<(String, BTreeMap<String, Yaml>, Model)> {
    let pseudo = Model {
        name: snap.name.clone(),
        path: snap.path.clone(),
        sql: snap.sql.clone(),
        config: ModelConfig::default(),
        description: None,
        columns: Vec::new(),
        package: None,
    };
    let resolve: Resolver = Arc::new(|n: &str| n.to_string());
    let r = render::render(&pseudo, &project.render_context(false, resolve))?;
    let mut config = snap.config.clone();
    for (k, v) in r.config {
        config.insert(k, v);
    }
    Ok((r.sql, config, pseudo))
}

/// Run one snapshot at `now`.
pub async fn run_one(
    ws: &Workspace,
    ctx: &SessionContext,
    lake: &Lake,
    snap: &Snapshot,
    now: DateTime<Utc>,
) -> Result<SnapshotResult> {
    let started = Instant::now();
    let (sql, config, pseudo) = render_query(&ws.project, snap)?;
    let origin = format!("{} (snapshot {})", snap.path, snap.name);
    let cfg = resolve(&config, &origin)?;
    let query = sql.trim().trim_end_matches(';').to_string();
    let now_sql = format!(
        "cast('{}' as timestamp)",
        now.format("%Y-%m-%dT%H:%M:%S%.6f")
    );
    let source_df = ctx
        .sql_with_options(&query, query_only())
        .await
        .map_err(|e| model_error(&pseudo, &query, &e.to_string()))?;
    let columns: Vec<String> = source_df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for k in &cfg.unique_key {
        if !columns.contains(k) {
            return Err(Error::Input(format!(
                "{origin}: unique_key {k} is not a column of the query (it has {})",
                columns.join(", ")
            )));
        }
    }
    let source_name = format!("__ferry_snapshot_source_{}", snap.name);
    ctx.deregister_table(source_name.as_str())?;
    ctx.register_table(source_name.as_str(), source_df.into_view())?;

    let updated = match &cfg.strategy {
        Strategy::Timestamp { updated_at } => {
            if !columns.contains(updated_at) {
                return Err(Error::Input(format!(
                    "{origin}: updated_at {updated_at} is not a column of the query"
                )));
            }
            format!("cast(s.{} as timestamp)", q(updated_at))
        }
        Strategy::Check { .. } => now_sql.clone(),
    };
    let key_text = |alias: &str| -> String {
        let parts: Vec<String> = cfg
            .unique_key
            .iter()
            .map(|k| format!("coalesce(cast({alias}.{} as varchar), '')", q(k)))
            .collect();
        parts.join(" || '|' || ")
    };
    let scd_id = format!(
        "md5({} || '|' || coalesce(cast({updated} as varchar), ''))",
        key_text("s")
    );
    let valid_to_current = cfg
        .valid_to_current
        .clone()
        .map(|v| format!("cast({v} as timestamp)"))
        .unwrap_or_else(|| "cast(null as timestamp)".into());
    let meta = |from: &str| -> String {
        format!(
            "{scd_id} as dbt_scd_id, {updated} as dbt_updated_at, {from} as dbt_valid_from, {valid_to_current} as dbt_valid_to"
        )
    };
    let deleted_col = cfg.hard_deletes == HardDeletes::NewRecord;
    let source_cols: Vec<String> = columns.iter().map(|c| format!("s.{}", q(c))).collect();
    let url = delta::table_url(SNAPSHOTS, &snap.name)?;
    let existing = delta::open(lake, &url).await?;
    let Some(table) = existing else {
        // First run: every row is a first version, valid from its updated_at.
        let select = format!(
            "select {}, {}{} from {source_name} s",
            source_cols.join(", "),
            meta(&updated),
            if deleted_col {
                ", 'False' as dbt_is_deleted"
            } else {
                ""
            }
        );
        let df = ctx
            .sql_with_options(&select, query_only())
            .await
            .map_err(|e| model_error(&pseudo, &select, &e.to_string()))?;
        let table = delta::overwrite(lake, &url, df).await?;
        delta::register(ctx, &snap.name, &table).await?;
        super::relation::register_one(ctx, &ws.project, &snap.name).await?;
        let rows = super::run::count_rows(ctx, &snap.name).await?;
        return Ok(SnapshotResult {
            name: snap.name.clone(),
            rows,
            inserted: rows,
            closed: 0,
            seconds: started.elapsed().as_secs_f64(),
        });
    };
    let target_name = format!("__ferry_snapshot_target_{}", snap.name);
    delta::register(ctx, &target_name, &table).await?;
    let target_cols: Vec<String> = {
        let df = ctx.table(target_name.as_str()).await?;
        df.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    for c in &columns {
        if !target_cols.contains(c) {
            return Err(Error::Input(format!(
                "{origin}: the query has a column {c} the snapshot table lacks; ferry does not \
                 add columns to a snapshot yet: remove it from the query, or start the snapshot \
                 again by deleting lake/{SNAPSHOTS}/{}",
                snap.name
            )));
        }
    }
    let current_filter = match &cfg.valid_to_current {
        Some(v) => format!("c.dbt_valid_to = cast({v} as timestamp)"),
        None => "c.dbt_valid_to is null".into(),
    };
    let join = cfg
        .unique_key
        .iter()
        .map(|k| format!("s.{0} = c.{0}", q(k)))
        .collect::<Vec<_>>()
        .join(" and ");
    let changed = match &cfg.strategy {
        Strategy::Timestamp { .. } => format!("{updated} > c.dbt_updated_at"),
        Strategy::Check { columns: check } => {
            let check: Vec<String> = match check {
                Some(c) => c.clone(),
                None => columns
                    .iter()
                    .filter(|c| !cfg.unique_key.contains(c))
                    .cloned()
                    .collect(),
            };
            if check.is_empty() {
                "false".into()
            } else {
                check
                    .iter()
                    .map(|c| format!("s.{0} is distinct from c.{0}", q(c)))
                    .collect::<Vec<_>>()
                    .join(" or ")
            }
        }
    };
    let not_deleted = if deleted_col {
        " and coalesce(c.dbt_is_deleted, 'False') <> 'True'"
    } else {
        ""
    };
    // The staging rows, as dbt builds them: inserts (new keys, new versions,
    // keys back after a deletion), updates and deletes (the current version
    // to close, by dbt_scd_id). One shape for all, for one MERGE.
    let all_target: Vec<String> = target_cols.clone();
    let pick = |kind: &str| -> String {
        all_target
            .iter()
            .map(|c| {
                let v = match (kind, c.as_str()) {
                    ("insert", "dbt_scd_id") => scd_id.clone(),
                    ("insert", "dbt_updated_at") => updated.clone(),
                    ("insert", "dbt_valid_from") => updated.clone(),
                    ("insert", "dbt_valid_to") => valid_to_current.clone(),
                    ("insert", "dbt_is_deleted") => "'False'".into(),
                    ("insert", col) => format!("s.{}", q(col)),
                    // A key back after its deletion record: closed now.
                    ("update", "dbt_valid_to") if deleted_col => format!(
                        "case when c.dbt_is_deleted = 'True' then {now_sql} else {updated} end"
                    ),
                    ("update", "dbt_valid_to") => updated.clone(),
                    ("delete", "dbt_valid_to") => now_sql.clone(),
                    ("deleted_record", "dbt_scd_id") => format!(
                        "md5({} || '|deleted|' || cast({now_sql} as varchar))",
                        key_text("c")
                    ),
                    ("deleted_record", "dbt_updated_at" | "dbt_valid_from") => now_sql.clone(),
                    ("deleted_record", "dbt_valid_to") => valid_to_current.clone(),
                    ("deleted_record", "dbt_is_deleted") => "'True'".into(),
                    ("deleted_record", col) => format!("c.{}", q(col)),
                    (_, "dbt_scd_id") => "c.dbt_scd_id".into(),
                    (_, col) => format!("c.{}", q(col)),
                };
                format!("{v} as {}", q(c))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let current = format!("(select * from {target_name} c where {current_filter})");
    let mut parts = vec![
        format!(
            "select {}, 'insert' as dbt_change_type from {source_name} s left join {current} c on {join} \
             where c.dbt_scd_id is null or ({changed}){}",
            pick("insert"),
            if deleted_col {
                " or c.dbt_is_deleted = 'True'"
            } else {
                ""
            }
        ),
        format!(
            "select {}, 'update' as dbt_change_type from {source_name} s join {current} c on {join} \
             where ({changed}){}",
            pick("update"),
            if deleted_col {
                " or c.dbt_is_deleted = 'True'"
            } else {
                ""
            }
        ),
    ];
    if cfg.hard_deletes != HardDeletes::Ignore {
        let first_key = q(&cfg.unique_key[0]);
        parts.push(format!(
            "select {}, 'delete' as dbt_change_type from {current} c left join {source_name} s on {join} \
             where s.{first_key} is null{not_deleted}",
            pick("delete")
        ));
        if deleted_col {
            parts.push(format!(
                "select {}, 'insert' as dbt_change_type from {current} c left join {source_name} s on {join} \
                 where s.{first_key} is null{not_deleted}",
                pick("deleted_record")
            ));
        }
    }
    let staging_sql = parts.join("\nunion all\n");
    let staging = ctx
        .sql_with_options(&staging_sql, query_only())
        .await
        .map_err(|e| model_error(&pseudo, &staging_sql, &e.to_string()))?;
    // Counted before the merge, from the same rows.
    let counts = staging
        .clone()
        .aggregate(
            vec![datafusion::prelude::col("dbt_change_type")],
            vec![datafusion::functions_aggregate::count::count_all()],
        )?
        .collect()
        .await?;
    let mut inserted = 0u64;
    let mut closed = 0u64;
    for b in &counts {
        let kinds = arrow::array::cast::as_string_array(b.column(0));
        let n = b
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .ok_or_else(|| Error::Internal("count is not Int64".into()))?;
        for i in 0..b.num_rows() {
            match kinds.value(i) {
                "insert" => inserted += n.value(i).max(0) as u64,
                _ => closed += n.value(i).max(0) as u64,
            }
        }
    }
    let table = if inserted + closed == 0 {
        table
    } else {
        delta::merge_snapshot(table, staging, &target_cols).await?
    };
    ctx.deregister_table(target_name.as_str())?;
    delta::register(ctx, &snap.name, &table).await?;
    super::relation::register_one(ctx, &ws.project, &snap.name).await?;
    let rows = super::run::count_rows(ctx, &snap.name).await?;
    Ok(SnapshotResult {
        name: snap.name.clone(),
        rows,
        inserted,
        closed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Run the snapshots (all, or those in `only`), in name order.
pub async fn run(
    ws: &Workspace,
    ctx: &SessionContext,
    lake: &Lake,
    only: Option<&std::collections::BTreeSet<String>>,
) -> Vec<(String, Result<SnapshotResult>)> {
    let now = Utc::now();
    let mut out = Vec::new();
    for snap in &ws.project.snapshots {
        if only.is_some_and(|o| !o.contains(&snap.name)) {
            continue;
        }
        out.push((snap.name.clone(), run_one(ws, ctx, lake, snap, now).await));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_blocks_are_found_with_their_names_and_bodies() {
        let text = "{% snapshot orders_snapshot %}\n{{ config(unique_key='id') }}\nselect 1\n{% endsnapshot %}\n\
                    {%- snapshot b -%} select 2 {%- endsnapshot -%}";
        let b = blocks(text, "s.sql").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, "orders_snapshot");
        assert!(b[0].1.contains("select 1") && b[0].1.contains("config("));
        assert_eq!(b[1], ("b".to_string(), " select 2 ".to_string()));
        assert!(blocks("{% snapshot x %} select 1", "s.sql").is_err());
        assert!(blocks("{% snapshot %} select 1 {% endsnapshot %}", "s.sql").is_err());
        // `snapshots` or `snapshot_x` in a tag are not snapshot blocks.
        assert!(
            blocks("{% set snapshot_x = 1 %}", "s.sql")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn config_needs_a_key_and_a_strategy() {
        let cfg = |y: &str| -> BTreeMap<String, Yaml> { serde_yaml_ng::from_str(y).unwrap() };
        let r = resolve(
            &cfg(
                "{unique_key: [a, b], strategy: check, check_cols: all, hard_deletes: new_record}",
            ),
            "x",
        )
        .unwrap();
        assert_eq!(r.unique_key, vec!["a", "b"]);
        assert_eq!(r.strategy, Strategy::Check { columns: None });
        assert_eq!(r.hard_deletes, HardDeletes::NewRecord);
        let r = resolve(
            &cfg("{unique_key: id, strategy: timestamp, updated_at: u, invalidate_hard_deletes: true}"),
            "x",
        )
        .unwrap();
        assert_eq!(r.hard_deletes, HardDeletes::Invalidate);
        for (y, want) in [
            ("{strategy: check, check_cols: all}", "unique_key"),
            ("{unique_key: id}", "strategy"),
            ("{unique_key: id, strategy: timestamp}", "updated_at"),
            ("{unique_key: id, strategy: check}", "check_cols"),
            ("{unique_key: id, strategy: scd}", "timestamp or check"),
        ] {
            let e = resolve(&cfg(y), "snapshots/s.yml").unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("snapshots/s.yml"),
                "{y}: {e}"
            );
        }
    }
}
