//! Persisted models and seeds as Delta Lake tables in the lake.
//!
//! Tables live at `models/<name>/` and `seeds/<name>/` under the lake root,
//! on the lake's own object store (registered with delta-rs under the
//! `lake://` scheme, so local, memory and S3 lakes all work the same). Every
//! write is one Delta commit: readers see the previous version until it
//! lands, and a failed build leaves the previous version in place.

use std::sync::{Arc, Once};

use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionContext;
use deltalake::logstore::{
    LogStore, LogStoreFactory, StorageConfig, default_logstore, logstore_factories,
};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use url::Url;

use crate::engine::LAKE_URL;
use crate::error::{Error, Result};
use crate::lake::Lake;

/// Folder of persisted models.
pub const MODELS: &str = "models";
/// Folder of seeds.
pub const SEEDS: &str = "seeds";
/// Folder of snapshots.
pub const SNAPSHOTS: &str = "snapshots";

struct LakeLogStores;

impl LogStoreFactory for LakeLogStores {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_scheme() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(url) = Url::parse("lake://") {
            logstore_factories().insert(url, Arc::new(LakeLogStores));
        }
    });
}

fn delta_err(e: DeltaTableError) -> Error {
    Error::Table(e.to_string())
}

/// `lake://lake/<folder>/<name>`
pub fn table_url(folder: &str, name: &str) -> Result<Url> {
    Url::parse(&format!("{LAKE_URL}{folder}/{name}")).map_err(|e| Error::Internal(e.to_string()))
}

fn builder(lake: &Lake, url: &Url) -> Result<DeltaTableBuilder> {
    register_scheme();
    let root = Url::parse(LAKE_URL).map_err(|e| Error::Internal(e.to_string()))?;
    let store: Arc<dyn ObjectStore> = Arc::new(SortedListing(lake.store().clone()));
    Ok(DeltaTableBuilder::from_url(url.clone())
        .map_err(delta_err)?
        .with_storage_backend(store, root))
}

/// The lake's store with listings in path order. The Delta kernel reads the
/// commit log by listing it and expects object-store order (sorted, as S3,
/// GCS and Azure return it); a local folder lists in directory order.
#[derive(Debug)]
struct SortedListing(Arc<dyn ObjectStore>);

impl std::fmt::Display for SortedListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SortedListing({})", self.0)
    }
}

fn sorted(
    s: BoxStream<'static, object_store::Result<ObjectMeta>>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    async move {
        let mut items: Vec<object_store::Result<ObjectMeta>> = s.collect().await;
        items.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.location.cmp(&b.location),
            (Err(_), Ok(_)) => std::cmp::Ordering::Less,
            (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        });
        futures::stream::iter(items)
    }
    .flatten_stream()
    .boxed()
}

#[async_trait::async_trait]
impl ObjectStore for SortedListing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        sorted(self.0.list(prefix))
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        sorted(self.0.list_with_offset(prefix, offset))
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut r = self.0.list_with_delimiter(prefix).await?;
        r.objects.sort_by(|a, b| a.location.cmp(&b.location));
        r.common_prefixes.sort();
        Ok(r)
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

/// The table at `url`, or `None` if nothing was ever committed there.
pub async fn open(lake: &Lake, url: &Url) -> Result<Option<DeltaTable>> {
    // Look before asking delta-rs, which logs an error for a missing table.
    let log = Path::from(format!("{}/_delta_log", url.path().trim_matches('/')));
    let has_log = match lake.store().list_with_delimiter(Some(&log)).await {
        Ok(l) => !l.objects.is_empty(),
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if !has_log {
        return Ok(None);
    }
    match builder(lake, url)?.load().await {
        Ok(t) => Ok(Some(t)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(delta_err(e)),
    }
}

/// A handle for writing a table that may not exist yet.
async fn open_or_new(lake: &Lake, url: &Url) -> Result<DeltaTable> {
    match open(lake, url).await? {
        Some(t) => Ok(t),
        None => builder(lake, url)?.build().map_err(delta_err),
    }
}

/// Register the table under `name` in `ctx`.
pub async fn register(ctx: &SessionContext, name: &str, table: &DeltaTable) -> Result<()> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(delta_err)?;
    let provider: Arc<dyn TableProvider> = table.table_provider().await?;
    // Listed only for a cluster: a local run reads through `provider`.
    let files = match super::cluster::url().map(|_| plain_parquet(table)) {
        Some(Ok(())) => Ok(table.get_file_uris().map_err(delta_err)?.collect()),
        Some(Err(why)) => Err(why),
        None => Err("no cluster is configured".to_string()),
    };
    ctx.deregister_table(name)?;
    ctx.register_table(
        name,
        Arc::new(DeltaFiles {
            inner: provider,
            files,
        }),
    )?;
    Ok(())
}

/// Reader features whose tables' rows are their Parquet files' rows, read
/// with the table's schema.
const PLAIN_READER_FEATURES: [&str; 4] = [
    "timestampNtz",
    "v2Checkpoint",
    "vacuumProtocolCheck",
    "checkpointProtection",
];

/// `Ok` when the table's current rows are exactly the rows of its Parquet
/// files read with its schema (what ferry writes); else what a plain
/// Parquet reader would get wrong: partition values live in the log,
/// deletion vectors hide rows, column mapping renames columns.
fn plain_parquet(table: &DeltaTable) -> std::result::Result<(), String> {
    let snapshot = table.snapshot().map_err(|e| e.to_string())?;
    let metadata = snapshot.metadata();
    if !metadata.partition_columns().is_empty() {
        return Err(format!(
            "it is partitioned by {}",
            metadata.partition_columns().join(", ")
        ));
    }
    let mapping = metadata
        .configuration()
        .get("delta.columnMapping.mode")
        .map(String::as_str)
        .unwrap_or("none");
    if mapping != "none" {
        return Err(format!(
            "it maps columns (delta.columnMapping.mode = {mapping})"
        ));
    }
    let features = snapshot.protocol().reader_features().unwrap_or_default();
    if let Some(f) = features
        .iter()
        .map(ToString::to_string)
        .find(|f| !PLAIN_READER_FEATURES.contains(&f.as_str()))
    {
        return Err(format!("it uses the reader feature {f}"));
    }
    Ok(())
}

/// A Delta table as registered in a session: delta-rs's provider (every
/// local query reads through it), and the Parquet files of the version it
/// reads, for a cluster that knows plain Parquet only
/// ([`crate::engine::cluster`]).
#[derive(Debug)]
pub struct DeltaFiles {
    inner: Arc<dyn TableProvider>,
    files: std::result::Result<Vec<String>, String>,
}

impl DeltaFiles {
    /// The version's data files, as `lake://lake/...` URLs; `Err` says why
    /// reading them as plain Parquet would not give the table's rows.
    pub fn files(&self) -> std::result::Result<&[String], &str> {
        match &self.files {
            Ok(f) => Ok(f),
            Err(why) => Err(why),
        }
    }
}

#[async_trait::async_trait]
impl TableProvider for DeltaFiles {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&datafusion::common::Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn datafusion::catalog::Session,
        args: datafusion::catalog::ScanArgs<'a>,
    ) -> datafusion::error::Result<datafusion::catalog::ScanResult> {
        self.inner.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::prelude::Expr],
    ) -> datafusion::error::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<datafusion::common::Statistics> {
        self.inner.statistics()
    }
}

/// Replace the table's contents with `df` (one commit; the schema may change).
pub async fn overwrite(lake: &Lake, url: &Url, df: DataFrame) -> Result<DeltaTable> {
    write(lake, url, df, SaveMode::Overwrite).await
}

/// Append `df` to the table (created if missing).
pub async fn append(lake: &Lake, url: &Url, df: DataFrame) -> Result<DeltaTable> {
    write(lake, url, df, SaveMode::Append).await
}

/// Delta stores timestamps in microseconds. SQL's `cast(x as timestamp)`
/// gives nanoseconds, which the writer would truncate with a warning per
/// file; cast them here, once, so the table's schema is what is written.
fn delta_types(df: DataFrame) -> Result<DataFrame> {
    use arrow::datatypes::{DataType, TimeUnit};
    use datafusion::common::Column;
    use datafusion::logical_expr::{Expr, cast};
    if !df
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(TimeUnit::Nanosecond, _)))
    {
        return Ok(df);
    }
    let exprs: Vec<Expr> = df
        .schema()
        .iter()
        .map(|(q, f)| {
            let c = Expr::Column(Column::new(q.cloned(), f.name()));
            match f.data_type() {
                DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
                    cast(c, DataType::Timestamp(TimeUnit::Microsecond, tz.clone())).alias(f.name())
                }
                _ => c,
            }
        })
        .collect();
    Ok(df.select(exprs)?)
}

/// The Parquet settings of every Delta write: those of every file ferry
/// writes (`lake::log::writer_properties`: snappy, row groups of
/// `ROW_GROUP_ROWS`, 128Ki rows). delta-rs's default wrote a model of a
/// million rows as one row group, so every model reading it scanned on one
/// core; on the jaffle-shop-shaped bench (`cargo bench --profile dev --
/// shop`) the `orders` model reading 1M items went from 2.4 s to 1.8 s
/// (medians of five runs).
fn writer_properties() -> parquet::file::properties::WriterProperties {
    crate::lake::log::writer_properties()
}

/// Stream `df` into the table as one commit.
async fn write(lake: &Lake, url: &Url, df: DataFrame, mode: SaveMode) -> Result<DeltaTable> {
    let table = open_or_new(lake, url).await?;
    let df = delta_types(df)?;
    let (state, plan) = df.into_parts();
    let mut builder = table
        .write(Vec::<arrow::record_batch::RecordBatch>::new())
        .with_input_plan(plan)
        .with_session_state(Arc::new(state))
        .with_writer_properties(writer_properties())
        .with_save_mode(mode);
    if mode == SaveMode::Overwrite {
        builder = builder.with_schema_mode(SchemaMode::Overwrite);
    }
    builder.await.map_err(delta_err)
}

/// Merge `df` into an existing table on `keys`: matched rows are updated,
/// new rows inserted (one commit).
pub async fn merge(table: DeltaTable, df: DataFrame, keys: &[String]) -> Result<DeltaTable> {
    let df = delta_types(df)?;
    let columns: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let predicate = keys
        .iter()
        .map(|k| format!("target.\"{k}\" = source.\"{k}\""))
        .collect::<Vec<_>>()
        .join(" and ");
    let session = Arc::new(df.clone().into_parts().0);
    let update_cols = columns.clone();
    let insert_cols = columns;
    let (table, _metrics) = table
        .merge(df, predicate.as_str())
        // The source is read once: delta-rs's default reads it twice (first
        // for the key ranges that prune the target's files), and a result
        // streaming back from a cluster can be read only once.
        .with_streaming(true)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_session_state(session)
        .with_writer_properties(writer_properties())
        .when_matched_update(|mut u| {
            for c in &update_cols {
                u = u.update(c.as_str(), format!("source.\"{c}\"").as_str());
            }
            u
        })
        .map_err(delta_err)?
        .when_not_matched_insert(|mut i| {
            for c in &insert_cols {
                i = i.set(c.as_str(), format!("source.\"{c}\"").as_str());
            }
            i
        })
        .map_err(delta_err)?
        .await
        .map_err(delta_err)?;
    Ok(table)
}

/// A snapshot's MERGE (dbt's): `staging` rows with `dbt_change_type`
/// `update` or `delete` close the version of the same `dbt_scd_id` (its
/// `dbt_valid_to`); `insert` rows are added with `columns`. One commit.
pub async fn merge_snapshot(
    table: DeltaTable,
    staging: DataFrame,
    columns: &[String],
) -> Result<DeltaTable> {
    let staging = delta_types(staging)?;
    let session = Arc::new(staging.clone().into_parts().0);
    let (table, _metrics) = table
        .merge(staging, "target.dbt_scd_id = source.dbt_scd_id")
        .with_source_alias("source")
        .with_target_alias("target")
        .with_session_state(session)
        .with_writer_properties(writer_properties())
        .when_matched_update(|u| {
            u.predicate("source.dbt_change_type in ('update', 'delete')")
                .update("dbt_valid_to", "source.dbt_valid_to")
        })
        .map_err(delta_err)?
        .when_not_matched_insert(|mut i| {
            i = i.predicate("source.dbt_change_type = 'insert'");
            for c in columns {
                i = i.set(c.as_str(), format!("source.\"{c}\"").as_str());
            }
            i
        })
        .map_err(delta_err)?
        .await
        .map_err(delta_err)?;
    Ok(table)
}

/// Folder names directly under `folder` (candidate tables; [`open`] tells
/// which hold a Delta log).
async fn folders(lake: &Lake, folder: &str) -> Result<Vec<String>> {
    match lake
        .store()
        .list_with_delimiter(Some(&Path::from(folder)))
        .await
    {
        Ok(l) => Ok(l
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect()),
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Register every seed and persisted model in the lake under its name.
pub async fn register_all(ctx: &SessionContext, lake: &Lake) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for folder in [SEEDS, SNAPSHOTS, MODELS] {
        for name in folders(lake, folder).await? {
            if let Some(t) = open(lake, &table_url(folder, &name)?).await? {
                register(ctx, &name, &t).await?;
                out.push(name);
            }
        }
    }
    Ok(out)
}
