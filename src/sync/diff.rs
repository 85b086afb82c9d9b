//! The set-based diff of a sync, in DataFusion. The SQL lives in
//! `sql/sync/`: `snapshot.sql` rebuilds what the CRM last confirmed from the
//! lake, `diff.sql` compares the model with it by match key.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionContext;
use futures::StreamExt;
use minijinja::{Environment, context};

use super::state;
use crate::engine::LAKE_URL;
use crate::error::{Error, Result};
use crate::lake::Lake;

/// `sql/sync/diff.sql`
pub const DIFF_SQL: &str = include_str!("../../sql/sync/diff.sql");
/// `sql/sync/snapshot.sql`
pub const SNAPSHOT_SQL: &str = include_str!("../../sql/sync/snapshot.sql");

pub const SNAPSHOT: &str = "__ferry_sync_snapshot";
const BASE: &str = "__ferry_sync_base";
const LOG: &str = "__ferry_sync_log";

/// Keys compared case-insensitively: HubSpot treats these properties so.
pub fn lower_key(property: &str) -> bool {
    matches!(property.to_ascii_lowercase().as_str(), "email" | "domain")
}

/// `"a"."b"` for `a.b`.
pub fn quote_relation(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn render(template: &str, ctx: minijinja::Value) -> Result<String> {
    let mut env = Environment::new();
    env.add_template("t", template)
        .map_err(|e| Error::Internal(format!("sync SQL template: {e}")))?;
    env.get_template("t")
        .and_then(|t| t.render(ctx))
        .map_err(|e| Error::Internal(format!("sync SQL template: {e}")))
}

/// The diff SQL for a model relation, key column and mapped columns.
pub fn diff_sql(
    model: &str,
    key_column: &str,
    lower: bool,
    columns: &[String],
    snapshot: &str,
) -> Result<String> {
    diff_part_sql(model, key_column, lower, columns, snapshot, 1, 0)
}

/// The diff SQL of key bucket `bucket` of `buckets` (see [`plan`]).
pub fn diff_part_sql(
    model: &str,
    key_column: &str,
    lower: bool,
    columns: &[String],
    snapshot: &str,
    buckets: usize,
    bucket: usize,
) -> Result<String> {
    render(
        DIFF_SQL,
        context! {
            model => model,
            key => quote_ident(key_column),
            key_name => key_column.replace('\'', "''"),
            lower_key => lower,
            columns => columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>(),
            snapshot => snapshot,
            buckets => buckets,
            bucket => bucket,
        },
    )
}

/// Bytes one key takes while the diff runs, roughly: the key, the values'
/// hash and the record id as the join and the duplicate count hold them
/// (string views over the Parquet pages), plus each mapped value.
/// Measured: a 10M-row diff of two values peaked at 3.0 GiB in one pass,
/// 320 bytes a key (`cargo bench --profile dev -- sync`).
fn bytes_per_key(columns: usize) -> u64 {
    272 + 24 * columns as u64
}

/// How many key buckets the diff runs in, one after another, so that one
/// bucket fits in half the engine's memory limit (`[engine]
/// memory_limit`; the rest is for the rows to send and the process): 1
/// until that is too small, at most [`MAX_BUCKETS`].
///
/// The estimate assumes short values (scores, stages, ids: up to 12
/// bytes, held inside Arrow's string views); long text values (notes,
/// URLs) take more than it counts.
pub fn bucket_count(rows: u64, columns: usize, memory_limit: u64) -> usize {
    let budget = (memory_limit / 2).max(1);
    rows.saturating_mul(bytes_per_key(columns))
        .div_ceil(budget)
        .clamp(1, MAX_BUCKETS as u64) as usize
}

/// The most key buckets a diff is split into.
pub const MAX_BUCKETS: usize = 64;

/// Rows of a relation, and whether the number is exact: from the plan's
/// statistics when it has them (persisted models and Parquet: exact; some
/// plans estimate, which `exact` refuses), else counted (a view model is
/// computed once for it).
async fn row_count(ctx: &SessionContext, relation: &str, exact: bool) -> Result<(u64, bool)> {
    use datafusion::common::stats::Precision;
    let df = ctx.sql(&format!("select * from {relation}")).await?;
    let plan = df.clone().create_physical_plan().await?;
    let stats = datafusion::physical_plan::StatisticsContext::default().compute(
        plan.as_ref(),
        &datafusion::physical_plan::StatisticsArgs::new(),
    );
    match stats.map(|s| s.num_rows) {
        Ok(Precision::Exact(n)) => return Ok((n as u64, true)),
        Ok(Precision::Inexact(n)) if !exact => return Ok((n as u64, false)),
        _ => {}
    }
    Ok((
        count(ctx, &format!("select count(*) from {relation}")).await?,
        true,
    ))
}

/// The number a `select count(*) ...` query returns.
pub async fn count(ctx: &SessionContext, sql: &str) -> Result<u64> {
    let b = ctx.sql(sql).await?.collect().await?;
    Ok(b.first()
        .filter(|b| b.num_rows() > 0 && b.num_columns() > 0)
        .and_then(|b| {
            let c = arrow::compute::cast(b.column(0), &DataType::Int64).ok()?;
            let c = c.as_primitive::<arrow::datatypes::Int64Type>();
            c.is_valid(0).then(|| c.value(0).max(0) as u64)
        })
        .unwrap_or(0))
}

/// A sync's diff, planned: the SQL of its key buckets and the sizes that
/// chose them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One query per key bucket, run one after another by [`scan`].
    pub parts: Vec<String>,
    /// The model's rows, and whether that is exact (an estimate from the
    /// plan's statistics is not).
    pub model_rows: (u64, bool),
    /// The snapshot's rows (counted).
    pub snapshot_rows: u64,
}

/// The diff of a model against the registered snapshot
/// ([`register_snapshot`]), as the SQL of its key buckets: one query when
/// the larger of the two fits the engine's memory limit, else as many as
/// [`bucket_count`] says, each reading both sides and keeping its share of
/// the keys.
pub async fn plan(
    ctx: &SessionContext,
    model: &str,
    key_column: &str,
    lower: bool,
    columns: &[String],
) -> Result<Plan> {
    let model_rows = row_count(ctx, model, false).await?;
    let (snapshot_rows, _) = row_count(ctx, SNAPSHOT, true).await?;
    let rows = model_rows.0.max(snapshot_rows);
    let limit = crate::engine::memory::settings().memory_limit;
    let buckets = bucket_count(rows, columns.len(), limit);
    if buckets == MAX_BUCKETS {
        tracing::warn!(
            rows,
            buckets,
            "the diff may not fit the engine's memory limit even in {MAX_BUCKETS} key buckets; raise [engine] memory_limit if it fails"
        );
    } else if buckets > 1 {
        tracing::info!(
            rows,
            buckets,
            "the diff runs in key buckets to stay within the engine's memory limit"
        );
    }
    let parts = (0..buckets)
        .map(|b| diff_part_sql(model, key_column, lower, columns, SNAPSHOT, buckets, b))
        .collect::<Result<_>>()?;
    Ok(Plan {
        parts,
        model_rows,
        snapshot_rows,
    })
}

/// The snapshot SQL over a base snapshot, a log, and a cut-off.
pub fn snapshot_sql(base: &str, log: &str, after: i64) -> Result<String> {
    render(
        SNAPSHOT_SQL,
        context! { base => base, log => log, after => after },
    )
}

async fn has_files(lake: &Lake, prefix: &object_store::path::Path) -> Result<bool> {
    let mut list = lake.store().list(Some(prefix));
    match list.next().await {
        Some(Ok(_)) => Ok(true),
        Some(Err(object_store::Error::NotFound { .. })) | None => Ok(false),
        Some(Err(e)) => Err(e.into()),
    }
}

fn listing(ctx: &SessionContext, name: &str, urls: Vec<String>) -> Result<()> {
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let urls = urls
        .into_iter()
        .map(ListingTableUrl::parse)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(state::log_schema());
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

fn empty(ctx: &SessionContext, name: &str) -> Result<()> {
    let t = MemTable::try_new(state::log_schema(), vec![vec![]])?;
    ctx.register_table(name, Arc::new(t))?;
    Ok(())
}

/// Register `__ferry_sync_snapshot`: the sync's confirmed state.
pub async fn register_snapshot(ctx: &SessionContext, lake: &Lake, sync: &str) -> Result<()> {
    for t in [BASE, LOG, SNAPSHOT] {
        ctx.deregister_table(t)?;
    }
    let prefix = state::log_prefix(sync);
    let whole_log = |ctx: &SessionContext| -> Result<()> {
        listing(ctx, LOG, vec![format!("{LAKE_URL}{prefix}/")])
    };
    let after = match state::latest_snapshot(lake, sync).await? {
        // The log files of later generations (runs after the snapshot's).
        Some(state::Snapshot::Generation(path, generation)) => {
            listing(ctx, BASE, vec![format!("{LAKE_URL}{path}")])?;
            let files = state::log_files_after(lake, sync, generation).await?;
            if files.is_empty() {
                empty(ctx, LOG)?;
            } else {
                listing(
                    ctx,
                    LOG,
                    files.iter().map(|f| format!("{LAKE_URL}{f}")).collect(),
                )?;
            }
            i64::MIN
        }
        // A snapshot from before generations: rows logged after its time.
        Some(state::Snapshot::Time(path, micros)) => {
            listing(ctx, BASE, vec![format!("{LAKE_URL}{path}")])?;
            whole_log(ctx)?;
            micros
        }
        None => {
            empty(ctx, BASE)?;
            if has_files(lake, &prefix).await? {
                whole_log(ctx)?;
            } else {
                empty(ctx, LOG)?;
            }
            i64::MIN
        }
    };
    let sql = snapshot_sql(BASE, LOG, after)?;
    let view = ctx.sql(&sql).await?.into_view();
    ctx.register_table(SNAPSHOT, view)?;
    Ok(())
}

/// What the diff says to do with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffOp {
    Add,
    Change,
    Unchanged,
    Remove,
    Reject,
}

impl DiffOp {
    pub fn parse(s: &str) -> Option<DiffOp> {
        Some(match s {
            "add" => DiffOp::Add,
            "change" => DiffOp::Change,
            "unchanged" => DiffOp::Unchanged,
            "remove" => DiffOp::Remove,
            "reject" => DiffOp::Reject,
            _ => return None,
        })
    }
}

/// One row of the diff, values formatted as CRM strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: Option<String>,
    pub op: DiffOp,
    pub reason: Option<String>,
    pub hash: Option<String>,
    pub crm_id: Option<String>,
    pub created: bool,
    pub values: Vec<Option<String>>,
}

fn options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_null("")
        .with_date_format(Some("%Y-%m-%d"))
        .with_timestamp_format(Some("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.3f%:z"))
}

fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("diff column {name} missing")))?;
    let col = arrow::compute::cast(col, &DataType::Utf8)?;
    let a = col.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect())
}

/// Decode a batch of the diff.
pub fn rows(batch: &RecordBatch, columns: usize) -> Result<Vec<Row>> {
    let keys = strings(batch, "_key")?;
    let ops = strings(batch, "_op")?;
    let reasons = strings(batch, "_reason")?;
    let hashes = strings(batch, "_hash")?;
    let ids = strings(batch, "_crm_id")?;
    let created = batch
        .column_by_name("_created")
        .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned())
        .ok_or_else(|| Error::Internal("diff column _created missing".into()))?;
    let opts = options();
    let first = batch.num_columns() - columns;
    let formatters = (0..columns)
        .map(|i| ArrayFormatter::try_new(batch.column(first + i).as_ref(), &opts))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let op = ops[r]
            .as_deref()
            .and_then(DiffOp::parse)
            .ok_or_else(|| Error::Internal(format!("unknown diff op {:?}", ops[r])))?;
        let values = (0..columns)
            .map(|i| {
                let col = batch.column(first + i);
                (!col.is_null(r)).then(|| formatters[i].value(r).to_string())
            })
            .collect();
        out.push(Row {
            key: keys[r].clone(),
            op,
            reason: reasons[r].clone(),
            hash: hashes[r].clone(),
            crm_id: ids[r].clone(),
            created: !created.is_null(r) && created.value(r),
            values,
        });
    }
    Ok(out)
}

/// The diff's rows counted by operation and by whether this sync created
/// the CRM record (`_created`): what the mirror guard and the run's
/// counters need, gathered while the rows to send are read.
/// Indexed by `DiffOp as usize`, then by `_created`: one add per row on
/// the scan's hot path, no hashing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally([[u64; 2]; 5]);

impl Tally {
    fn add(&mut self, op: DiffOp, created: bool) {
        self.0[op as usize][created as usize] += 1;
    }

    /// Rows with `op`, created by this sync or not.
    pub fn count(&self, op: DiffOp) -> u64 {
        self.of(op, true) + self.of(op, false)
    }

    /// Rows with `op` whose `_created` is `created`.
    pub fn of(&self, op: DiffOp, created: bool) -> u64 {
        self.0[op as usize][created as usize]
    }

    /// The model's rows: every row but those that left it.
    pub fn model_rows(&self) -> u64 {
        [
            DiffOp::Add,
            DiffOp::Change,
            DiffOp::Unchanged,
            DiffOp::Reject,
        ]
        .into_iter()
        .map(|op| self.count(op))
        .sum()
    }
}

/// Read the diff once: every row is counted in the returned [`Tally`], and
/// every row that is not `unchanged` is decoded and handed to `keep`, in
/// the order the engine produces them.
///
/// One pass instead of a `group by` for the counts and a second query for
/// the rows: each query joins the whole model with the whole snapshot, so
/// the second pass doubled a sync's diff time. `unchanged` rows, the bulk of
/// a steady sync, are counted from the `_op` column and never decoded.
///
/// `parts` are the diff's key buckets ([`plan`]), run one after another:
/// only one bucket's hash tables are held at a time.
///
/// `stopped` is asked before each bucket: a run told to stop (SIGTERM,
/// `ferry serve`'s shutdown) returns `None` between buckets instead of
/// reading the rest.
pub async fn scan(
    ctx: &SessionContext,
    parts: &[String],
    columns: usize,
    stopped: impl Fn() -> bool,
    mut keep: impl FnMut(Row) -> Result<()>,
) -> Result<Option<Tally>> {
    let mut tally = Tally::default();
    for sql in parts {
        if stopped() {
            return Ok(None);
        }
        scan_part(ctx.sql(sql).await?, columns, &mut tally, &mut keep).await?;
    }
    Ok(Some(tally))
}

async fn scan_part(
    df: datafusion::dataframe::DataFrame,
    columns: usize,
    tally: &mut Tally,
    keep: &mut impl FnMut(Row) -> Result<()>,
) -> Result<()> {
    let mut stream = df.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let ops = batch
            .column_by_name("_op")
            .ok_or_else(|| Error::Internal("diff column _op missing".into()))?;
        let ops = arrow::compute::cast(ops, &DataType::Utf8)?;
        let ops = ops.as_string::<i32>();
        let created = batch
            .column_by_name("_created")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>().cloned())
            .ok_or_else(|| Error::Internal("diff column _created missing".into()))?;
        let mut wanted = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            let op = (!ops.is_null(r))
                .then(|| DiffOp::parse(ops.value(r)))
                .flatten()
                .ok_or_else(|| {
                    Error::Internal(format!(
                        "unknown diff op {:?}",
                        (!ops.is_null(r)).then(|| ops.value(r))
                    ))
                })?;
            let c = !created.is_null(r) && created.value(r);
            tally.add(op, c);
            wanted.push(op != DiffOp::Unchanged);
        }
        let wanted = BooleanArray::from(wanted);
        if wanted.true_count() == 0 {
            continue;
        }
        let batch = arrow::compute::filter_record_batch(&batch, &wanted)?;
        for row in rows(&batch, columns)? {
            keep(row)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use proptest::prelude::*;

    use super::*;

    /// Model rows: (key, a, b) with small domains so collisions, nulls,
    /// blanks, case variants and duplicates all happen.
    fn model_strategy() -> impl Strategy<Value = Vec<(Option<String>, Option<String>, Option<i64>)>>
    {
        let key = prop_oneof![
            3 => prop::sample::select(vec!["a@x.io", "A@x.io", "b@x.io", "c@x.io", "d@x.io", "e@x.io", "f@x.io", " g@x.io"]).prop_map(|s| Some(s.to_string())),
            1 => Just(None),
            1 => Just(Some("  ".to_string())),
        ];
        let a = prop_oneof![
            prop::sample::select(vec!["", "1", "1,", ",1", "1:", "~", "x|y"])
                .prop_map(|s| Some(s.to_string())),
            Just(None),
        ];
        let b = prop_oneof![(0i64..3).prop_map(Some), Just(None)];
        prop::collection::vec((key, a, b), 0..12)
    }

    fn table(rows: &[(Option<String>, Option<String>, Option<i64>)]) -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("email", DataType::Utf8, true),
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        MemTable::try_new(schema, vec![vec![batch]]).unwrap()
    }

    type Model = Vec<(Option<String>, Option<String>, Option<i64>)>;

    /// The naive reference: valid rows by normalized key.
    fn valid(m: &Model) -> BTreeMap<String, (Option<String>, Option<i64>)> {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for r in m {
            if let Some(k) = &r.0 {
                *n.entry(k.trim().to_lowercase()).or_default() += 1;
            }
        }
        m.iter()
            .filter_map(|r| {
                let k = r.0.as_ref()?.trim().to_lowercase();
                (!k.is_empty() && n[&k] == 1).then(|| (k, (r.1.clone(), r.2)))
            })
            .collect()
    }

    async fn run_diff(ctx: &SessionContext) -> Vec<(Option<String>, String)> {
        let sql = diff_sql("model", "email", true, &["a".into(), "b".into()], "snap").unwrap();
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in &batches {
            for r in rows(b, 2).unwrap() {
                let op = format!("{:?}", r.op);
                out.push((r.key, op));
            }
        }
        out.sort();
        out
    }

    /// The snapshot's payloads (every value last sent, for every key) once
    /// rode through the diff's join for nothing: in a real sync they made
    /// its hash table several times larger than the keys and hashes.
    #[tokio::test]
    async fn the_diff_never_reads_the_snapshots_payloads() {
        let ctx = SessionContext::new();
        crate::engine::functions::register(&ctx);
        ctx.register_table("model", Arc::new(table(&[]))).unwrap();
        let snap = Arc::new(Schema::new(vec![
            Field::new("_key", DataType::Utf8, true),
            Field::new("_hash", DataType::Utf8, true),
            Field::new("_crm_id", DataType::Utf8, true),
            Field::new("_created", DataType::Boolean, true),
            Field::new("_payload", DataType::Utf8, true),
        ]));
        ctx.register_table(
            "snap",
            Arc::new(MemTable::try_new(snap, vec![vec![]]).unwrap()),
        )
        .unwrap();
        let cols = ["a".to_string(), "b".to_string()];
        for sql in [
            diff_sql("model", "email", true, &cols, "snap").unwrap(),
            diff_part_sql("model", "email", true, &cols, "snap", 3, 1).unwrap(),
        ] {
            let plan = ctx
                .sql(&sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let shown = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string();
            assert!(shown.contains("_crm_id"), "{shown}");
            assert!(!shown.contains("_payload"), "{shown}");
        }
    }

    #[test]
    fn the_diff_splits_into_buckets_only_past_half_the_memory_limit() {
        const GIB: u64 = 1 << 30;
        // The bench's 10M rows of two values: one pass at the default limit
        // (half of a 24 GiB machine), six buckets at 1 GiB.
        assert_eq!(bucket_count(10_000_000, 2, 12 * GIB), 1);
        assert_eq!(bucket_count(10_000_000, 2, GIB), 6);
        assert_eq!(bucket_count(0, 2, GIB), 1);
        assert_eq!(bucket_count(u64::MAX, 200, 1), 64);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn diff_matches_a_naive_reference(prev in model_strategy(), now in model_strategy()) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                // The snapshot is what a run of `prev` against nothing confirms.
                let ctx = SessionContext::new();
                crate::engine::functions::register(&ctx);
                ctx.register_table("model", Arc::new(table(&prev))).unwrap();
                let empty = "select cast(null as varchar) as _key, cast(null as varchar) as _hash, \
                             cast(null as varchar) as _crm_id, cast(null as boolean) as _created, \
                             cast(null as varchar) as _payload where false";
                ctx.register_table("snap", ctx.sql(empty).await.unwrap().into_view()).unwrap();
                let sql = diff_sql("model", "email", true, &["a".into(), "b".into()], "snap").unwrap();
                let confirmed = ctx
                    .sql(&format!("select _key, _hash, cast(null as varchar) as _crm_id, false as _created, cast(null as varchar) as _payload from ({sql}) where _op = 'add'"))
                    .await.unwrap().collect().await.unwrap();
                let snap = MemTable::try_new(confirmed.first().map(|b| b.schema()).unwrap_or_else(|| {
                    Arc::new(Schema::new(vec![
                        Field::new("_key", DataType::Utf8, true),
                        Field::new("_hash", DataType::Utf8, true),
                        Field::new("_crm_id", DataType::Utf8, true),
                        Field::new("_created", DataType::Boolean, false),
                        Field::new("_payload", DataType::Utf8, true),
                    ]))
                }), vec![confirmed]).unwrap();
                ctx.deregister_table("snap").unwrap();
                ctx.register_table("snap", Arc::new(snap)).unwrap();
                ctx.deregister_table("model").unwrap();
                ctx.register_table("model", Arc::new(table(&now))).unwrap();
                let got = run_diff(&ctx).await;

                let before = valid(&prev);
                let after = valid(&now);
                let mut want: Vec<(Option<String>, String)> = Vec::new();
                let mut present = BTreeSet::new();
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for r in &now {
                    if let Some(k) = &r.0 {
                        *counts.entry(k.trim().to_lowercase()).or_default() += 1;
                    }
                }
                for r in &now {
                    let k = r.0.as_ref().map(|k| k.trim().to_lowercase());
                    if let Some(k) = &k { present.insert(k.clone()); }
                    let op = match &k {
                        None => "Reject",
                        Some(k) if k.is_empty() => "Reject",
                        Some(k) if counts[k] > 1 => "Reject",
                        Some(k) => match before.get(k) {
                            None => "Add",
                            Some(v) if v != &after[k] => "Change",
                            Some(_) => "Unchanged",
                        },
                    };
                    want.push((k, op.to_string()));
                }
                for k in before.keys() {
                    if !present.contains(k) {
                        want.push((Some(k.clone()), "Remove".to_string()));
                    }
                }
                want.sort();
                assert_eq!(got, want);

                // The one pass a sync makes: its tally counts every row of
                // the diff, and it hands over every row but the unchanged.
                let sql = diff_sql("model", "email", true, &["a".into(), "b".into()], "snap").unwrap();
                let mut kept = Vec::new();
                let tally = scan(&ctx, &[sql], 2, || false, |r| {
                    kept.push((r.key, format!("{:?}", r.op)));
                    Ok(())
                })
                .await
                .unwrap()
                .unwrap();
                kept.sort();
                let sent: Vec<_> = want.iter().filter(|w| w.1 != "Unchanged").cloned().collect();
                assert_eq!(kept, sent);
                for op in [DiffOp::Add, DiffOp::Change, DiffOp::Unchanged, DiffOp::Remove, DiffOp::Reject] {
                    let n = want.iter().filter(|w| w.1 == format!("{op:?}")).count() as u64;
                    assert_eq!(tally.count(op), n, "{op:?}");
                }
                assert_eq!(tally.model_rows(), now.len() as u64);

                // In key buckets (a diff past the memory limit), one after
                // another: the same rows and counts, null and blank keys
                // included.
                let parts: Vec<String> = (0..3)
                    .map(|b| diff_part_sql("model", "email", true, &["a".into(), "b".into()], "snap", 3, b).unwrap())
                    .collect();
                let mut bucketed = Vec::new();
                let by_bucket = scan(&ctx, &parts, 2, || false, |r| {
                    bucketed.push((r.key, format!("{:?}", r.op)));
                    Ok(())
                })
                .await
                .unwrap()
                .unwrap();
                bucketed.sort();
                assert_eq!(bucketed, kept);
                assert_eq!(by_bucket, tally);
            });
        }

        /// The confirmed state is the newest `ok` outcome logged after the
        /// snapshot for each key, else the snapshot's row, less what was
        /// archived, forgotten or removed: whatever mix of keys, outcomes
        /// and cut-off (only logged keys are ranked, so this pins that no
        /// other key is lost or doubled).
        #[test]
        fn snapshot_is_the_newest_confirmed_outcome_per_key(
            base in prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c", "d", "e", "f"]), 0u8..3, 0..6),
            log in prop::collection::vec((
                prop::option::weighted(0.9, prop::sample::select(vec!["a", "b", "c", "g", "h"])),
                0u8..3,
                prop::sample::select(vec!["upsert", "create", "archive", "remove", "skip", "forget", "search"]),
                prop::bool::weighted(0.8),
            ), 0..10),
            after in 0i64..4,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                use arrow::array::{BooleanArray, TimestampMicrosecondArray};
                // (key, hash, operation, status, at): `at` is unique, as
                // microsecond clocks make it in practice.
                type Entry = (Option<String>, String, String, String, i64);
                let table = |rows: &[Entry]| {
                    let schema = Arc::new(Schema::new(vec![
                        Field::new("key", DataType::Utf8, true),
                        Field::new("hash", DataType::Utf8, true),
                        Field::new("crm_id", DataType::Utf8, true),
                        Field::new("created", DataType::Boolean, true),
                        Field::new("payload", DataType::Utf8, true),
                        Field::new("operation", DataType::Utf8, true),
                        Field::new("status", DataType::Utf8, true),
                        Field::new("at", DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())), true),
                    ]));
                    let col = |f: &dyn Fn(&Entry) -> Option<String>| -> arrow::array::ArrayRef {
                        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
                    };
                    let batch = RecordBatch::try_new(schema.clone(), vec![
                        col(&|r| r.0.clone()),
                        col(&|r| Some(r.1.clone())),
                        col(&|r| r.0.as_ref().map(|k| format!("id-{k}"))),
                        Arc::new(BooleanArray::from(vec![false; rows.len()])),
                        col(&|_| None),
                        col(&|r| Some(r.2.clone())),
                        col(&|r| Some(r.3.clone())),
                        Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>()).with_timezone("UTC")),
                    ]).unwrap();
                    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
                };
                let base: Vec<Entry> = base
                    .iter()
                    .map(|(k, h)| (Some(k.to_string()), format!("h{h}"), "snapshot".to_string(), "ok".to_string(), 0))
                    .collect();
                let log: Vec<Entry> = log
                    .iter()
                    .enumerate()
                    .map(|(i, (k, h, op, ok))| (
                        k.map(str::to_string),
                        format!("h{h}"),
                        op.to_string(),
                        if *ok { "ok" } else { "failed" }.to_string(),
                        // Newest first in some cases, oldest first in others.
                        if i % 2 == 0 { i as i64 } else { 100 - i as i64 },
                    ))
                    .collect();
                let ctx = SessionContext::new();
                ctx.register_table("base", table(&base)).unwrap();
                ctx.register_table("log", table(&log)).unwrap();
                let sql = snapshot_sql("base", "log", after).unwrap();
                let batches = ctx
                    .sql(&format!("select _key, _hash from ({sql}) order by _key"))
                    .await.unwrap().collect().await.unwrap();
                let mut got: Vec<(Option<String>, String)> = Vec::new();
                for b in &batches {
                    let keys = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                    let hashes = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                    for i in 0..b.num_rows() {
                        got.push(((!keys.is_null(i)).then(|| keys.value(i).to_string()), hashes.value(i).to_string()));
                    }
                }
                got.sort();

                let counted = ["create", "update", "upsert", "skip", "archive", "forget", "add", "remove"];
                let mut latest: BTreeMap<Option<String>, &Entry> = base.iter().map(|r| (r.0.clone(), r)).collect();
                let mut newest: BTreeMap<Option<String>, &Entry> = BTreeMap::new();
                for r in log.iter().filter(|r| r.3 == "ok" && counted.contains(&r.2.as_str()) && r.4 > after) {
                    if newest.get(&r.0).is_none_or(|n| n.4 < r.4) {
                        newest.insert(r.0.clone(), r);
                    }
                }
                latest.extend(newest);
                let mut want: Vec<(Option<String>, String)> = latest
                    .into_values()
                    .filter(|r| !["archive", "forget", "remove"].contains(&r.2.as_str()))
                    .map(|r| (r.0.clone(), r.1.clone()))
                    .collect();
                want.sort();
                assert_eq!(got, want);
            });
        }
    }
}
#[cfg(test)]
mod golden {
    /// The rendered diff and snapshot SQL for a two-column sync, against
    /// `tests/golden/sync_*.sql` (UPDATE_GOLDEN=1 rewrites them).
    #[test]
    fn rendered_sync_sql_matches_golden_files() {
        let cases = [
            (
                "sync_diff.sql",
                super::diff_sql(
                    "\"contact_scores\"",
                    "email",
                    true,
                    &["lead_score".into(), "persona".into()],
                    super::SNAPSHOT,
                )
                .unwrap(),
            ),
            (
                "sync_diff_bucket.sql",
                super::diff_part_sql(
                    "\"contact_scores\"",
                    "email",
                    true,
                    &["lead_score".into(), "persona".into()],
                    super::SNAPSHOT,
                    4,
                    0,
                )
                .unwrap(),
            ),
            (
                "sync_snapshot.sql",
                super::snapshot_sql("base", "log", 1_700_000_000_000_000).unwrap(),
            ),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        for (file, sql) in cases {
            let path = dir.join(file);
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&path, &sql).unwrap();
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                sql, want,
                "{file} differs; run with UPDATE_GOLDEN=1 if the change is intended"
            );
        }
    }
}
