//! Model queries on a Ballista cluster (`[engine] url = "df://host:50050"`).
//!
//! ferry plans every query as it always does (Jinja, refs, macros, views and
//! ephemeral models inlined, its own optimizer rules). With a cluster
//! configured, [`remote`] takes the plan of a model's build, rewrites its
//! table scans into scans of plain Parquet file lists, and sends it to the
//! cluster's scheduler; the executors read the lake's files from object
//! storage and ferry streams the result back and commits it as the same
//! Delta write as a local run.
//!
//! **What runs where.** A model's query runs on the cluster when every table
//! it reads is lake files: landed streams and `ferry.ingestions` /
//! `ferry.quarantine` (listing tables over `lake://lake/...`), and seeds,
//! snapshots and persisted models (Delta tables, sent as the Parquet files
//! of their current version). Anything else (an in-memory table) keeps the
//! model local, with the reason in the log. The Delta commit, tests,
//! contracts, snapshots, seeds and syncs run in the ferry process.
//!
//! **The cluster** is ferry's own scheduler and executors
//! (`ferry engine scheduler`, `ferry engine executor`), Ballista's processes
//! with ferry's functions and the project's lake registered under
//! [`LAKE_URL`]: Ballista's stock binaries know neither. Executors pull
//! their tasks from the scheduler (Ballista's pull-staged policy), so the
//! scheduler never connects to them; they serve task results on one port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use ballista::prelude::SessionContextExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::execution::context::SessionContext;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, TableScanBuilder};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionConfig};
use url::Url;

use super::{LAKE_URL, delta::DeltaFiles, functions, memory};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// Ballista's default scheduler port.
pub const DEFAULT_PORT: u16 = 50050;

/// ferry's settings, sent with every query to the scheduler and on to the
/// executors with every task. Written by hand: the entries of DataFusion
/// 55's `extensions_options!` lack their prefix, so Ballista would send
/// `lake_id` and the receiving side could not set it.
#[derive(Debug, Clone, Default)]
pub struct FerryOptions {
    /// The id of the lake the query was planned over (`_ferry/lake_id`): a
    /// cluster serving another lake refuses the query instead of reading
    /// missing files as empty tables.
    pub lake_id: String,
}

impl datafusion::config::ExtensionOptions for FerryOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn datafusion::config::ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::error::Result<()> {
        match key {
            "lake_id" => {
                self.lake_id = value.to_string();
                Ok(())
            }
            _ => Err(datafusion::error::DataFusionError::Configuration(format!(
                "ferry.{key} is not a setting"
            ))),
        }
    }

    fn entries(&self) -> Vec<datafusion::config::ConfigEntry> {
        vec![datafusion::config::ConfigEntry {
            key: "ferry.lake_id".into(),
            value: Some(self.lake_id.clone()),
            description: "the id of the lake the query was planned over",
        }]
    }
}

impl datafusion::config::ConfigExtension for FerryOptions {
    const PREFIX: &'static str = "ferry";
}

/// Where a lake keeps its id.
const LAKE_ID: &str = "_ferry/lake_id";

/// The lake's id: a UUID written once, by whichever process asks first.
pub async fn lake_id(store: &dyn object_store::ObjectStore) -> Result<String> {
    use object_store::ObjectStoreExt;
    let path = object_store::path::Path::from(LAKE_ID);
    for _ in 0..2 {
        match store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                return Ok(String::from_utf8_lossy(&bytes).trim().to_string());
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let id = uuid::Uuid::now_v7().to_string();
        match crate::lake::log::put_once(store, &path, id.clone().into_bytes()).await {
            Ok(()) => return Ok(id),
            // Another process wrote it first: read theirs.
            Err(Error::Storage(object_store::Error::AlreadyExists { .. })) => {}
            Err(e) => return Err(e),
        }
    }
    Err(Error::Internal(format!(
        "{LAKE_ID}: written and then not found"
    )))
}

/// Refuse a query planned over another lake than `ours` (`who` is this
/// process).
fn same_lake(config: &SessionConfig, ours: &str, who: &str) -> datafusion::error::Result<()> {
    let theirs = config
        .options()
        .extensions
        .get::<FerryOptions>()
        .map(|o| o.lake_id.as_str())
        .unwrap_or_default();
    if theirs == ours {
        return Ok(());
    }
    Err(datafusion::error::DataFusionError::Plan(format!(
        "this {who} serves the lake {ours:?} but the query was planned over the lake {theirs:?}: \
         start `ferry engine scheduler` and every `ferry engine executor` with the lake of the \
         project that runs (ferry.toml's `lake` or FERRY_LAKE: one URL every process reaches)"
    )))
}

/// Check a cluster URL: `df://host[:port]`. Returns it normalized.
pub fn parse_url(text: &str) -> std::result::Result<String, String> {
    let bad = || {
        format!(
            "{text:?} is not a Ballista scheduler URL: write df://host:port, such as \"df://127.0.0.1:{DEFAULT_PORT}\""
        )
    };
    let url = Url::parse(text.trim()).map_err(|_| bad())?;
    if url.scheme() != "df" || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
        return Err(bad());
    }
    Ok(format!(
        "df://{}:{}",
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(DEFAULT_PORT)
    ))
}

/// The cluster models run on, if one is configured.
pub fn url() -> Option<&'static str> {
    memory::settings().url.as_deref()
}

/// Session settings of the cluster's processes and of the client: ferry's,
/// with Ballista's extensions. Ballista's adaptive planner is off: on the
/// starter project's first staging model (a union of two joins over one
/// table) Ballista 55.0's replanned stages without end (stage ids past 4,000
/// in a minute, "stages to be cancelled but its not implemented"), so
/// queries are planned into stages once, up front.
fn cluster_config() -> SessionConfig {
    super::session_config()
        .upgrade_for_ballista()
        .with_ballista_adaptive_query_planner(false)
        .with_option_extension(FerryOptions::default())
}

/// A session state with ferry's functions and optimizer rules over
/// `runtime`.
fn ferry_state(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionState {
    let state = SessionStateBuilder::new()
        .with_default_features()
        .with_runtime_env(runtime)
        .with_expr_planners(super::dialect::expr_planners())
        .with_optimizer_rules(super::optimize::optimizer_rules())
        .with_config(config)
        .build();
    let ctx = SessionContext::new_with_state(state);
    functions::register(&ctx);
    ctx.state()
}

/// A runtime whose object stores include the lake under [`LAKE_URL`],
/// spilling to `work_dir`.
fn lake_runtime(lake: &Lake, work_dir: Option<&str>) -> datafusion::error::Result<RuntimeEnv> {
    let mut builder = RuntimeEnvBuilder::new();
    if let Some(dir) = work_dir {
        builder = builder.with_temp_file_path(dir);
    }
    let runtime = builder.build()?;
    let url = Url::parse(LAKE_URL)
        .map_err(|e| datafusion::error::DataFusionError::Internal(e.to_string()))?;
    runtime.register_object_store(&url, lake.store().clone());
    Ok(runtime)
}

/// Why a plan cannot run on the cluster (a clause: "it reads t, ...").
#[derive(Debug)]
pub struct Local(pub String);

/// `plan` with every table scan a scan of lake files: Delta tables become
/// listing tables over their current files, views are inlined. `Err` names
/// a table the cluster cannot read.
pub fn distributable(plan: LogicalPlan) -> std::result::Result<LogicalPlan, Local> {
    let mut why: Option<String> = None;
    let out = plan
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let provider = source_as_provider(&scan.source)?;
            if provider.is::<ListingTable>() {
                return Ok(Transformed::no(node));
            }
            if let Some(view) = provider.downcast_ref::<datafusion::catalog::view::ViewTable>() {
                let inner = match distributable(view.logical_plan().clone()) {
                    Ok(p) => p,
                    Err(Local(w)) => {
                        why.get_or_insert(w);
                        return Ok(Transformed::no(node));
                    }
                };
                // As `ViewTable::scan` does: the pushed filters (they may
                // read columns the projection drops), the projection, the
                // limit.
                let mut b = LogicalPlanBuilder::from(inner).alias(scan.table_name.clone())?;
                if let Some(f) = datafusion::logical_expr::utils::conjunction(scan.filters.clone())
                {
                    b = b.filter(f)?;
                }
                if let Some(projection) = &scan.projection {
                    let schema = b.schema().clone();
                    let columns: Vec<_> = projection
                        .iter()
                        .map(|i| datafusion::prelude::Expr::Column(schema.columns()[*i].clone()))
                        .collect();
                    b = b.project(columns)?;
                }
                if let Some(n) = scan.fetch {
                    b = b.limit(0, Some(n))?;
                }
                return Ok(Transformed::yes(b.build()?));
            }
            if let Some(files) = provider.downcast_ref::<DeltaFiles>() {
                let files = match files.files() {
                    Ok(f) => f,
                    Err(not_plain) => {
                        why.get_or_insert(format!(
                            "it reads {}, which is not plain Parquet: {not_plain}",
                            scan.table_name
                        ));
                        return Ok(Transformed::no(node));
                    }
                };
                let urls = files
                    .iter()
                    .map(ListingTableUrl::parse)
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                if urls.is_empty() {
                    // A table without files (no rows): nothing to read.
                    return Ok(Transformed::yes(LogicalPlan::EmptyRelation(
                        datafusion::logical_expr::EmptyRelation {
                            produce_one_row: false,
                            schema: scan.projected_schema.clone(),
                        },
                    )));
                }
                let config = ListingTableConfig::new_with_multi_paths(urls)
                    .with_listing_options(super::catalog::listing_options())
                    .with_schema(provider.schema());
                let table = Arc::new(ListingTable::try_new(config)?);
                let new = TableScanBuilder::new(scan.table_name.clone(), provider_as_source(table))
                    .with_projection(scan.projection.clone())
                    .with_filters(scan.filters.clone())
                    .with_fetch(scan.fetch)
                    .build()?;
                return Ok(Transformed::yes(LogicalPlan::TableScan(new)));
            }
            why.get_or_insert(format!(
                "it reads {}, which is not lake files",
                scan.table_name
            ));
            Ok(Transformed::no(node))
        })
        .map_err(|e| {
            Local(format!(
                "its plan could not be rewritten for the cluster ({e})"
            ))
        })?;
    match why {
        Some(w) => Err(Local(w)),
        None => Ok(out.data),
    }
}

/// `df`'s rows computed on the cluster, as a frame of `local` that streams
/// them back (to be written by `local`, as a local result would be). With
/// no cluster configured, or a plan that reads something the cluster
/// cannot, `df` itself (logged).
pub async fn remote(local: &SessionContext, what: &str, df: DataFrame) -> Result<DataFrame> {
    let Some(url) = url() else {
        return Ok(df);
    };
    let plan = match distributable(df.logical_plan().clone()) {
        Ok(p) => p,
        Err(Local(why)) => {
            tracing::info!("{what} runs in this process: {why}");
            return Ok(df);
        }
    };
    let lake_url = datafusion::execution::object_store::ObjectStoreUrl::parse(LAKE_URL)?;
    let store = local.runtime_env().object_store(&lake_url)?;
    let mut config = cluster_config();
    // The stages' width is set here, where the query is planned: the
    // cluster's task slots, not this machine's cores, when configured.
    if let Some(n) = memory::settings().cluster_partitions {
        config = config.with_target_partitions(n);
    }
    if let Some(o) = config.options_mut().extensions.get_mut::<FerryOptions>() {
        o.lake_id = lake_id(store.as_ref()).await?;
    }
    let state = ferry_state(config, Arc::new(RuntimeEnv::default()));
    let cluster = SessionContext::remote_with_state(url, state)
        .await
        .map_err(|e| Error::Input(format!("the cluster at {url}: {e}")))?;
    // The result crosses as plain strings, put back into views here.
    let types = plan.schema().clone();
    let remote = DataFrame::new(cluster.state(), plan).select(unviewed(&types))?;
    let schema: SchemaRef = Arc::new(remote.schema().as_arrow().clone());
    let stream = remote.execute_stream().await?;
    tracing::info!("{what} runs on the cluster at {url}");
    // Its errors say where it ran. A job that failed failed on its own
    // terms (the query, the lake); anything else is the cluster's
    // (a scheduler not started, an executor gone).
    let url = url.to_string();
    let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        schema.clone(),
        futures::StreamExt::map(stream, move |r| {
            r.map_err(|e| {
                let text = e.to_string();
                let context = if text.contains("Job ") && text.contains(" failed: ") {
                    format!("on the Ballista cluster at {url}")
                } else {
                    format!(
                        "on the Ballista cluster at {url}: check that its scheduler and executors are running (`ferry engine scheduler`, `ferry engine executor`)"
                    )
                };
                datafusion::error::DataFusionError::Execution(format!("{text} ({context})"))
            })
        }),
    ));
    let table = StreamingTable::try_new(
        schema.clone(),
        vec![Arc::new(Once {
            schema,
            stream: Mutex::new(Some(stream)),
        })],
    )?;
    let back: Vec<datafusion::logical_expr::Expr> = types
        .fields()
        .iter()
        .map(|f| {
            let c = datafusion::logical_expr::Expr::Column(
                datafusion::common::Column::new_unqualified(f.name()),
            );
            datafusion::logical_expr::cast(c, f.data_type().clone()).alias(f.name())
        })
        .collect();
    Ok(local.read_table(Arc::new(table))?.select(back)?)
}

/// The columns of `schema` with string and binary views cast to plain
/// strings and binaries: the result a cluster sends back. A view array's
/// batch carries every buffer its views point into, so a join's output,
/// whose views point into whole input batches, is written out (as the last
/// stage's shuffle files) and sent (compressed, by the executor) many times
/// over: at 1M contacts `int_person_records` wrote 1,000 bytes a row and
/// took longer to fetch than Ballista keeps a finished job's files. A cast
/// copies just the strings.
fn unviewed(schema: &datafusion::common::DFSchema) -> Vec<datafusion::logical_expr::Expr> {
    use arrow::datatypes::DataType;
    use datafusion::common::Column;
    use datafusion::logical_expr::{Expr, cast};
    schema
        .iter()
        .map(|(q, f)| {
            let c = Expr::Column(Column::new(q.cloned(), f.name()));
            match f.data_type() {
                DataType::Utf8View => cast(c, DataType::Utf8).alias(f.name()),
                DataType::BinaryView => cast(c, DataType::Binary).alias(f.name()),
                _ => c,
            }
        })
        .collect()
}

/// A result stream that can be read once.
struct Once {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cluster result")
    }
}

impl PartitionStream for Once {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        match taken {
            Some(s) => s,
            None => {
                let e = datafusion::error::DataFusionError::Internal(
                    "a cluster result was read twice".into(),
                );
                Box::pin(RecordBatchStreamAdapter::new(
                    self.schema.clone(),
                    futures::stream::once(async move { Err(e) }),
                ))
            }
        }
    }
}

/// Run a scheduler for the project's lake at `bind` until the process
/// ends.
pub async fn serve_scheduler(lake: &Lake, bind: SocketAddr) -> Result<()> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let id = lake_id(lake.store().as_ref()).await?;
    let lake = lake.clone();
    let builder: ballista_scheduler::scheduler_server::SessionBuilder =
        Arc::new(move |config: SessionConfig| {
            same_lake(&config, &id, "scheduler")?;
            Ok(ferry_state(config, Arc::new(lake_runtime(&lake, None)?)))
        });
    let config = SchedulerConfig {
        bind_host: host(bind.ip()),
        bind_port: bind.port(),
        external_host: host(bind.ip()),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        // A finished job's result stays on its executors this long (Ballista's
        // default, 300 s, removed a result ferry was still reading into a
        // large model's table).
        finished_job_data_clean_up_interval_seconds: 3600,
        ..Default::default()
    }
    .with_override_config_producer(Arc::new(cluster_config))
    .with_override_session_builder(builder);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Internal(format!("the Ballista scheduler: {e}")))?;
    ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| Error::Input(format!("the Ballista scheduler at {bind}: {e}")))
}

/// Ballista 55.0's execution engine, except that tasks report no operator
/// metrics. The scheduler adds a task's metrics to its stage's only when
/// every task of the stage lists as many operators, and the tasks of a
/// stage over a `union all` do not (an operator a task never ran has none):
/// the update of that task's status then fails ("task metrics array size
/// 32 does not equal with the stage metrics array size 31"), and the job
/// waits for it without end or finishes without that task's rows (the
/// starter project's `rpt_enrichment_coverage`, eleven one-row branches,
/// came back with ten). The metrics only feed Ballista's logs and UI.
struct WithoutPlanMetrics(ballista_executor::execution_engine::DefaultExecutionEngine);

impl ballista_executor::execution_engine::ExecutionEngine for WithoutPlanMetrics {
    fn create_query_stage_exec(
        &self,
        job_id: ballista_core::JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> datafusion::error::Result<Arc<dyn ballista_executor::execution_engine::QueryStageExecutor>>
    {
        let inner = self.0.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )?;
        Ok(Arc::new(StageWithoutMetrics(inner)))
    }
}

struct StageWithoutMetrics(Arc<dyn ballista_executor::execution_engine::QueryStageExecutor>);

impl std::fmt::Debug for StageWithoutMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for StageWithoutMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

#[async_trait::async_trait]
impl ballista_executor::execution_engine::QueryStageExecutor for StageWithoutMetrics {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::ShuffleWritePartition>> {
        self.0.execute_query_stage(task_id, context).await
    }

    fn collect_plan_metrics(&self) -> Vec<datafusion::physical_plan::metrics::MetricsSet> {
        Vec::new()
    }

    fn collect_runtime_stats_reports(
        &self,
    ) -> Vec<ballista_core::serde::protobuf::RuntimeStatsReport> {
        self.0.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(
        &self,
    ) -> datafusion::error::Result<Vec<ballista_core::serde::protobuf::WindowStateReport>> {
        self.0.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<ballista_core::serde::protobuf::TaskColumnStats> {
        self.0.collect_column_stats()
    }
}

/// Where an executor listens and whom it serves.
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: String,
    /// The address executors and the client fetch results from.
    pub bind: SocketAddr,
    /// The host other processes reach this executor at (default: `bind`'s).
    pub external_host: Option<String>,
    /// Tasks run at once (default: the machine's cores).
    pub vcores: usize,
    /// Where shuffle files and spills go (default: a temporary folder).
    pub work_dir: Option<String>,
}

/// An address as Ballista joins it with a port (`host:port`): IPv6 in
/// brackets (`[::1]`), or Ballista cannot parse what it built.
fn host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Run an executor for the project's lake until the process ends.
pub async fn serve_executor(lake: &Lake, o: ExecutorOptions) -> Result<()> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    // The scheduler as `--engine` names it works too.
    let scheduler = match o.scheduler.strip_prefix("df://") {
        Some(rest) => rest.trim_end_matches('/').to_string(),
        None => o.scheduler.clone(),
    };
    let (scheduler_host, scheduler_port) = match scheduler.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>().map_err(|_| {
                Error::Input(format!(
                    "--scheduler {}: the port is not a number",
                    o.scheduler
                ))
            })?,
        ),
        None => (scheduler.clone(), DEFAULT_PORT),
    };
    let registry = ferry_state(cluster_config(), Arc::new(RuntimeEnv::default()));
    let work_dir = o.work_dir.clone();
    let id = lake_id(lake.store().as_ref()).await?;
    let lake = lake.clone();
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |config: &SessionConfig| {
        same_lake(config, &id, "executor")?;
        Ok(Arc::new(lake_runtime(&lake, work_dir.as_deref())?))
    });
    let config = ExecutorProcessConfig {
        bind_host: host(o.bind.ip()),
        // Unset: the address the scheduler sees this executor connect from.
        external_host: o
            .external_host
            .clone()
            .or_else(|| (!o.bind.ip().is_unspecified()).then(|| host(o.bind.ip()))),
        port: o.bind.port(),
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        vcores: o.vcores,
        work_dir: o.work_dir.clone(),
        memory_pool_size: Some(memory::settings().memory_limit),
        override_function_registry: Some(Arc::new((&registry).into())),
        override_runtime_producer: Some(runtime),
        override_config_producer: Some(Arc::new(cluster_config)),
        override_execution_engine: Some(Arc::new(WithoutPlanMetrics(
            ballista_executor::execution_engine::DefaultExecutionEngine::new(),
        ))),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::Input(format!("the Ballista executor at {}: {e}", o.bind)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: at 1M contacts a result of view batches, each carrying
    /// the buffers it was sliced from, took longer to fetch than Ballista
    /// keeps a finished job's files, and the model failed.
    #[tokio::test]
    async fn results_cross_as_plain_strings_that_carry_only_their_rows() {
        use arrow::array::{Array, ArrayRef, StringViewArray};
        use arrow::datatypes::DataType;
        use arrow::record_batch::RecordBatch;
        let ctx = crate::engine::memory_session();
        let big: StringViewArray = (0..100_000)
            .map(|i| Some(format!("a string longer than twelve bytes {i:08}")))
            .collect();
        let batch = RecordBatch::try_from_iter([("s", Arc::new(big) as ArrayRef)]).unwrap();
        ctx.register_batch("t", batch).unwrap();
        let df = ctx.sql("select s from t limit 10").await.unwrap();
        let held = |batches: &[RecordBatch]| -> usize {
            batches.iter().map(|b| b.get_array_memory_size()).sum()
        };
        let views = df.clone().collect().await.unwrap();
        assert!(held(&views) > 1 << 20, "the slice holds the whole buffer");
        let types = df.schema().clone();
        let plain = df
            .select(unviewed(&types))
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(plain[0].column(0).data_type(), &DataType::Utf8);
        assert_eq!(plain.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
        assert!(
            held(&plain) < 16 << 10,
            "{} bytes for 10 rows",
            held(&plain)
        );
        assert!(plain[0].column(0).len() <= 10);
    }

    #[test]
    fn ipv6_hosts_are_bracketed_for_ballista() {
        assert_eq!(host("::1".parse().unwrap()), "[::1]");
        assert_eq!(host("10.0.0.5".parse().unwrap()), "10.0.0.5");
        let joined = format!("{}:{}", host("::1".parse().unwrap()), 50051);
        assert!(joined.parse::<std::net::SocketAddr>().is_ok(), "{joined}");
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(parse_url("df://10.0.0.5").unwrap(), "df://10.0.0.5:50050");
        assert_eq!(
            parse_url(" df://sched.internal:6000 ").unwrap(),
            "df://sched.internal:6000"
        );
        for bad in [
            "http://x:50050",
            "df://",
            "10.0.0.5:50050",
            "df://x:1/path",
            "df://x?a=1",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(e.contains("df://host:port"), "{bad}: {e}");
        }
    }
}
