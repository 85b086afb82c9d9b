//! Lake tables in a DataFusion session.
//!
//! Each table is a `ListingTable` over a lake folder (every `.parquet` below
//! it, recursively). Raw streams use their stored schema (the union of all
//! columns ever landed), so files written before a column existed read it as
//! null. Seeds and persisted models (Delta tables under `seeds/` and
//! `models/`) are registered by name. Streams whose files predate stored schemas (copied in by hand) get
//! their schema inferred from the files.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionContext;
use object_store::ObjectStore;
use object_store::path::Path;

use super::LAKE_URL;
use crate::error::{Error, Result};
use crate::lake::layout::{self, StreamRef};
use crate::lake::{Lake, log, schema};
use crate::project::RESERVED_SCHEMA;

pub(crate) fn listing_options() -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet")
}

fn table_url(prefix: &Path) -> Result<ListingTableUrl> {
    Ok(ListingTableUrl::parse(format!("{LAKE_URL}{prefix}/"))?)
}

fn ensure_schema(ctx: &SessionContext, name: &str) -> Result<()> {
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| Error::Internal("default catalog missing".into()))?;
    if catalog.schema(name).is_none() {
        catalog.register_schema(name, Arc::new(MemorySchemaProvider::new()))?;
    }
    Ok(())
}

fn register(ctx: &SessionContext, name: &str, prefix: &Path, schema: SchemaRef) -> Result<()> {
    let config = ListingTableConfig::new(table_url(prefix)?)
        .with_listing_options(listing_options())
        .with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// Child folder names directly under `prefix`.
async fn children(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<String>> {
    match store.list_with_delimiter(Some(prefix)).await {
        Ok(list) => Ok(list
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect()),
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Register ferry's tables and every landed stream. Returns the stream
/// tables registered, as `source.stream`.
pub async fn register_lake(ctx: &SessionContext, lake: &Lake) -> Result<Vec<String>> {
    ensure_schema(ctx, RESERVED_SCHEMA)?;
    register(
        ctx,
        "ferry.ingestions",
        &layout::ingestions_prefix(),
        log::ingestions_schema(),
    )?;
    register(
        ctx,
        "ferry.quarantine",
        &layout::quarantine_prefix(),
        log::quarantine_schema(),
    )?;

    register(
        ctx,
        "ferry.runs",
        &layout::meta_prefix("runs"),
        crate::lake::tables::runs_schema(),
    )?;
    register(
        ctx,
        "ferry.model_runs",
        &layout::meta_prefix("model_runs"),
        crate::lake::tables::model_runs_schema(),
    )?;

    register(
        ctx,
        "ferry.sync_log",
        &crate::lake::tables::prefix("sync_log"),
        crate::lake::tables::sync_log_schema(),
    )?;
    register(
        ctx,
        "ferry.extract_runs",
        &layout::meta_prefix("extract_runs"),
        crate::lake::tables::extract_runs_schema(),
    )?;
    register(
        ctx,
        "ferry.sync_runs",
        &crate::lake::tables::prefix("sync_runs"),
        crate::lake::tables::sync_runs_schema(),
    )?;

    use crate::lake::tables;
    register(
        ctx,
        "ferry.run_stages",
        &tables::prefix(tables::RUN_STAGES),
        tables::run_stages_schema(),
    )?;
    register(
        ctx,
        "ferry.schedule_runs",
        &tables::prefix(tables::SCHEDULE_RUNS),
        tables::schedule_runs_schema(),
    )?;
    register(
        ctx,
        "ferry.alerts",
        &tables::prefix(tables::ALERTS),
        tables::alerts_schema(),
    )?;

    let store = lake.store().as_ref();
    let mut tables = Vec::new();
    // Streams with files, and streams a connector declared before any
    // record arrived (an empty HubSpot object): those read as empty tables.
    let mut streams = std::collections::BTreeSet::new();
    for root in [
        Path::from(layout::RAW),
        Path::from_iter([layout::META, "schemas"]),
    ] {
        for source in children(store, &root).await? {
            let under =
                Path::from_iter(root.parts().chain(std::iter::once(source.as_str().into())));
            for stream in children(store, &under).await? {
                streams.insert((source.clone(), stream));
            }
        }
    }
    for (source, stream) in streams {
        let Ok(stream_ref) = StreamRef::new(&source, &stream) else {
            tracing::warn!(
                "skipping lake folder raw/{source}/{stream}: not a valid source.stream name"
            );
            continue;
        };
        let prefix = layout::raw_prefix(&stream_ref);
        let table_schema = match schema::load(store, &stream_ref).await? {
            Some(s) => s.table_schema()?,
            None => {
                let url = table_url(&prefix)?;
                match listing_options().infer_schema(&ctx.state(), &url).await {
                    Ok(s) => s,
                    // An empty folder (a lake reset, files compacted away)
                    // is a stream with nothing in it yet, not a problem.
                    Err(e) if e.to_string().contains("No files found") => {
                        tracing::debug!(stream = %stream_ref, "skipping empty stream folder");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(stream = %stream_ref, "skipping stream without readable files: {e}");
                        continue;
                    }
                }
            }
        };
        ensure_schema(ctx, &source)?;
        register(ctx, &stream_ref.to_string(), &prefix, table_schema)?;
        tables.push(stream_ref.to_string());
    }
    // Persisted models and seeds, by name.
    tables.extend(super::delta::register_all(ctx, lake).await?);
    Ok(tables)
}
