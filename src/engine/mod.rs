//! The one place DataFusion sessions are made.
//!
//! Every query ferry runs goes through [`session`], so the session settings,
//! the lake's object store and the catalog of lake tables are set up the same
//! way everywhere (and a distributed engine can later be swapped in here).
//!
//! The lake's store is registered under the URL [`LAKE_URL`] whatever its
//! backend (local folder, memory, S3...), so table locations never change
//! when the lake moves. The catalog ([`catalog`]) exposes:
//! - `<source>.<stream>` for each landed stream (`raw/<source>/<stream>/`),
//!   with the union of its files' columns;
//! - `ferry.ingestions` and `ferry.quarantine`.
//!
//! Every session draws on one memory pool and spills to one folder
//! ([`memory`], `[engine]` in `ferry.toml`). With `[engine] url`, model
//! builds run on a Ballista cluster ([`cluster`]).

pub mod catalog;
pub mod cluster;
pub mod delta;
pub mod dialect;
pub mod first_last;
pub mod functions;
pub mod memory;
pub mod optimize;
pub mod shared;

use datafusion::execution::context::SessionContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use url::Url;

use crate::error::{Error, Result};
use crate::lake::Lake;

/// The URL the lake's object store is registered under in every session.
pub const LAKE_URL: &str = "lake://lake/";

/// Session settings shared by every query.
pub fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(true);
    // Lake tables read every file below their folder: quarantine nests
    // `<source>/<stream>/dt=.../` and users may add folders of their own.
    config
        .options_mut()
        .execution
        .listing_table_ignore_subdirectory = false;
    // Each sort keeps this much back for merging its spill files: 10 MiB by
    // default, which two sorts under a small limit cannot both get.
    let limit = memory::settings().memory_limit as usize;
    config.options_mut().execution.sort_spill_reservation_bytes = (limit / 32).min(10 << 20);
    config
}

/// A session over `lake` with every lake table registered.
pub async fn session(lake: &Lake) -> Result<SessionContext> {
    // Delta's planner executes the plan nodes delta-rs adds when it writes
    // a model's table; everything else plans as in a default session.
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_runtime_env(memory::runtime()?)
        .with_expr_planners(dialect::expr_planners())
        .with_optimizer_rules(optimize::optimizer_rules())
        .with_config(session_config())
        .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
        .build();
    let ctx = SessionContext::new_with_state(state);
    functions::register(&ctx);
    let url = Url::parse(LAKE_URL).map_err(|e| Error::Internal(e.to_string()))?;
    ctx.register_object_store(&url, lake.store().clone());
    catalog::register_lake(&ctx, lake).await?;
    Ok(ctx)
}

/// A session over nothing (no lake): for work that must not read or write
/// stored tables, such as unit tests on mock inputs. Same dialect.
pub fn memory_session() -> SessionContext {
    let runtime = memory::runtime().unwrap_or_default();
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_runtime_env(runtime)
        .with_expr_planners(dialect::expr_planners())
        .with_optimizer_rules(optimize::optimizer_rules())
        .with_config(session_config())
        .build();
    let ctx = SessionContext::new_with_state(state);
    functions::register(&ctx);
    ctx
}

/// Plan `sql` as a read: a query, `EXPLAIN`, `SHOW`, `DESCRIBE`. Writes
/// (`INSERT`, `COPY`, `CREATE`/`DROP`, `SET`...) are refused: the lake is
/// written only by ferry's own commands, which keep its promises (files are
/// written once, under their stream's partitions, logged after the data).
pub async fn read_only(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::dataframe::DataFrame> {
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("not supported") || text.contains("not allowed") {
            Error::Input(format!(
                "ferry query runs reads only ({text}). The lake is written by ferry's own commands: \
                 `ferry land` or `ferry extract` for raw data, models (`ferry run`) for tables"
            ))
        } else {
            Error::Query(e)
        }
    })
}

#[cfg(test)]
mod ground_floor {
    /// The engine is the ground floor every stage stands on: it imports none.
    #[test]
    fn the_engine_imports_no_stage() {
        let files = [
            ("mod.rs", include_str!("mod.rs")),
            ("catalog.rs", include_str!("catalog.rs")),
            ("cluster.rs", include_str!("cluster.rs")),
            ("functions.rs", include_str!("functions.rs")),
            ("delta.rs", include_str!("delta.rs")),
            ("dialect.rs", include_str!("dialect.rs")),
            ("first_last.rs", include_str!("first_last.rs")),
            ("memory.rs", include_str!("memory.rs")),
            ("optimize.rs", include_str!("optimize.rs")),
            ("shared.rs", include_str!("shared.rs")),
        ];
        for (file, text) in files {
            for stage in [
                "sync", "extract", "models", "operate", "run", "serve", "demo", "cli",
            ] {
                for pattern in [format!("crate::{stage}::"), format!("crate::{stage}}}")] {
                    assert!(
                        !text.contains(&pattern),
                        "src/engine/{file} imports the {stage} stage ({pattern})"
                    );
                }
            }
        }
    }
}
