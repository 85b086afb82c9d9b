//! The diff of a sync. The SQL lives in `sql/sync/`: `snapshot.sql`
//! rebuilds what the CRM last confirmed from the lake, `diff.sql` reads the
//! model and that snapshot; `index.rs` compares them by match key.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::FormatOptions;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionContext;
use futures::StreamExt;
use minijinja::{Environment, context};

mod index;

use super::state;
use crate::engine::LAKE_URL;
use crate::error::{Error, Result};
use crate::lake::Lake;

/// `sql/sync/diff.sql`
pub const DIFF_SQL: &str = include_str!("../../../sql/sync/diff.sql");
/// `sql/sync/snapshot.sql`
pub const SNAPSHOT_SQL: &str = include_str!("../../../sql/sync/snapshot.sql");

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

/// The reads of one key bucket of the diff (`sql/sync/diff.sql`), which
/// [`index::compare`] meets by key.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Every confirmed key, its values' hash and its created flag.
    pub snapshot_keys: String,
    /// Every model row: compared key, mapped values, their hash.
    pub model_rows: String,
    /// Every confirmed key and its record id.
    pub snapshot_ids: String,
}

/// The reads of key bucket `bucket` of `buckets` (see [`plan`]) of a model
/// relation's diff, by its key column and mapped columns, against
/// `snapshot`.
pub fn diff_part(
    model: &str,
    key_column: &str,
    lower: bool,
    columns: &[String],
    snapshot: &str,
    buckets: usize,
    bucket: usize,
) -> Result<Part> {
    let read = |pass: &str| {
        render(
            DIFF_SQL,
            context! {
                pass => pass,
                model => model,
                key => quote_ident(key_column),
                lower_key => lower,
                columns => columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>(),
                snapshot => snapshot,
                buckets => buckets,
                bucket => bucket,
            },
        )
    };
    Ok(Part {
        snapshot_keys: read("snapshot_keys")?,
        model_rows: read("model_rows")?,
        snapshot_ids: read("snapshot_ids")?,
    })
}

/// The model's rows as the diff reads them: `_key` (compared: trimmed, and
/// lowercased when `lower`), `_v0`.. (the mapped values), `_hash` (their
/// hash, as a snapshot keeps it).
pub fn model_rows_sql(
    model: &str,
    key_column: &str,
    lower: bool,
    columns: &[String],
) -> Result<String> {
    Ok(diff_part(model, key_column, lower, columns, SNAPSHOT, 1, 0)?.model_rows)
}

/// How many key buckets the diff runs in, one after another, so that one
/// bucket's key index ([`index::BYTES_PER_KEY`] a key of `rows`) and its
/// waiting new rows (the model's rows beyond the snapshot's, `new_rows`,
/// [`index::waiting_bytes`] each: a first sync's every row) fit in half the
/// engine's memory limit (`[engine] memory_limit`; the rest is for the
/// reads' batches, the rows to send and the process): 1 until that is too
/// small, at most [`MAX_BUCKETS`].
pub fn bucket_count(rows: u64, new_rows: u64, columns: usize, memory_limit: u64) -> usize {
    let budget = (memory_limit / 2).max(1);
    rows.saturating_mul(index::BYTES_PER_KEY)
        .saturating_add(new_rows.saturating_mul(index::waiting_bytes(columns)))
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
    /// The reads of each key bucket, compared one after another by [`scan`].
    pub parts: Vec<Part>,
    /// The mapped columns.
    pub columns: usize,
    /// The key column, as rejected rows' reasons name it.
    pub key_name: String,
    /// The model's rows, and whether that is exact (an estimate from the
    /// plan's statistics is not).
    pub model_rows: (u64, bool),
    /// The snapshot's rows (counted).
    pub snapshot_rows: u64,
}

/// The diff of a model against the registered snapshot
/// ([`register_snapshot`]), as the reads of its key buckets: one bucket
/// when the larger of the two fits the engine's memory limit, else as many
/// as [`bucket_count`] says, each reading both sides and keeping its share
/// of the keys.
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
    let new_rows = model_rows.0.saturating_sub(snapshot_rows);
    let buckets = bucket_count(rows, new_rows, columns.len(), limit);
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
        .map(|b| diff_part(model, key_column, lower, columns, SNAPSHOT, buckets, b))
        .collect::<Result<_>>()?;
    Ok(Plan {
        parts,
        columns: columns.len(),
        key_name: key_column.to_string(),
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

/// How values are written as CRM strings.
fn options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_null("")
        .with_date_format(Some("%Y-%m-%d"))
        .with_timestamp_format(Some("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.3f%:z"))
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

    /// Take back one [`Tally::add`].
    fn sub(&mut self, op: DiffOp, created: bool) {
        self.0[op as usize][created as usize] -= 1;
    }

    /// Add another tally's counts to this one.
    fn merge(&mut self, other: &Tally) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
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

/// Compare the model with the snapshot: every row is counted in the
/// returned [`Tally`], and every row that is not `unchanged` is decoded and
/// handed to `keep` (adds and rejects after the model is read, removes and
/// changes after the record ids are).
///
/// One comparison gives both: `unchanged` rows, the bulk of a steady sync,
/// are counted and never decoded.
///
/// `plan`'s parts are the diff's key buckets ([`plan`]), compared one after
/// another: only one bucket's key index is held at a time.
///
/// `stopped` is asked before each bucket: a run told to stop (SIGTERM,
/// `ferry serve`'s shutdown) returns `None` between buckets instead of
/// reading the rest.
pub async fn scan(
    ctx: &SessionContext,
    plan: &Plan,
    stopped: impl Fn() -> bool,
    mut keep: impl FnMut(Row) -> Result<()>,
) -> Result<Option<Tally>> {
    let mut tally = Tally::default();
    let rows = plan.model_rows.0.max(plan.snapshot_rows);
    // The index is sized for its bucket's keys up front (growing doubles
    // it); an estimate of a view's rows may be far off, so never past what
    // the memory limit leaves the index.
    let limit = crate::engine::memory::settings().memory_limit;
    let expected = rows
        .saturating_add(rows / 20)
        .div_ceil(plan.parts.len().max(1) as u64)
        .min(limit / 2 / index::BYTES_PER_KEY) as usize;
    for part in &plan.parts {
        if stopped() {
            return Ok(None);
        }
        index::compare(
            ctx,
            part,
            plan.columns,
            &plan.key_name,
            expected,
            &mut tally,
            &mut keep,
        )
        .await?;
    }
    Ok(Some(tally))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
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

    /// The diff of `model` against `snap` in `buckets` key buckets: every
    /// row handed over, and the tally.
    async fn run_diff(ctx: &SessionContext, buckets: usize) -> (Vec<Row>, Tally) {
        let cols = ["a".to_string(), "b".to_string()];
        let plan = Plan {
            parts: (0..buckets)
                .map(|b| diff_part("model", "email", true, &cols, "snap", buckets, b).unwrap())
                .collect(),
            columns: 2,
            key_name: "email".into(),
            model_rows: (0, false),
            snapshot_rows: 0,
        };
        let mut out = Vec::new();
        let tally = scan(
            ctx,
            &plan,
            || false,
            |r| {
                out.push(r);
                Ok(())
            },
        )
        .await
        .unwrap()
        .unwrap();
        (out, tally)
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
        let one = diff_part("model", "email", true, &cols, "snap", 1, 0).unwrap();
        let bucket = diff_part("model", "email", true, &cols, "snap", 3, 1).unwrap();
        for sql in [
            one.snapshot_keys,
            one.snapshot_ids,
            bucket.snapshot_keys,
            bucket.snapshot_ids,
        ] {
            let plan = ctx.sql(&sql).await.unwrap().into_optimized_plan().unwrap();
            let shown = plan.display_indent().to_string();
            assert!(
                shown.contains("TableScan: snap projection=[_key"),
                "{shown}"
            );
            assert!(!shown.contains("_payload"), "{shown}");
        }
    }

    #[test]
    fn the_diff_splits_into_buckets_only_past_half_the_memory_limit() {
        const GIB: u64 = 1 << 30;
        // The bench's 10M keys: one bucket at the default limit (half of a
        // 24 GiB machine) and at 2 GiB, two at 1 GiB.
        assert_eq!(bucket_count(10_000_000, 100_000, 2, 12 * GIB), 1);
        assert_eq!(bucket_count(10_000_000, 100_000, 2, 2 * GIB), 1);
        assert_eq!(bucket_count(10_000_000, 100_000, 2, GIB), 2);
        // A first sync: every row is new and waits to the end of the read.
        assert_eq!(bucket_count(10_000_000, 10_000_000, 2, 2 * GIB), 2);
        assert_eq!(bucket_count(10_000_000, 10_000_000, 2, GIB), 4);
        assert_eq!(bucket_count(0, 0, 2, GIB), 1);
        assert_eq!(bucket_count(u64::MAX, u64::MAX, 200, 1), 64);
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
                let (first, _) = run_diff(&ctx, 1).await;
                // Every key `prev` added, confirmed with a record id; the
                // ones starting with `a` created by this sync.
                let adds: Vec<&Row> = first.iter().filter(|r| r.op == DiffOp::Add).collect();
                let confirmed = RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        Field::new("_key", DataType::Utf8, true),
                        Field::new("_hash", DataType::Utf8, true),
                        Field::new("_crm_id", DataType::Utf8, true),
                        Field::new("_created", DataType::Boolean, true),
                        Field::new("_payload", DataType::Utf8, true),
                    ])),
                    vec![
                        Arc::new(StringArray::from(adds.iter().map(|r| r.key.clone()).collect::<Vec<_>>())),
                        Arc::new(StringArray::from(adds.iter().map(|r| r.hash.clone()).collect::<Vec<_>>())),
                        Arc::new(StringArray::from(adds.iter().map(|r| r.key.as_ref().map(|k| format!("id-{k}"))).collect::<Vec<_>>())),
                        Arc::new(BooleanArray::from(adds.iter().map(|r| r.key.as_ref().is_some_and(|k| k.starts_with('a'))).collect::<Vec<_>>())),
                        Arc::new(StringArray::from(vec![None::<String>; adds.len()])),
                    ],
                ).unwrap();
                let snap = MemTable::try_new(confirmed.schema(), vec![vec![confirmed]]).unwrap();
                ctx.deregister_table("snap").unwrap();
                ctx.register_table("snap", Arc::new(snap)).unwrap();
                ctx.deregister_table("model").unwrap();
                ctx.register_table("model", Arc::new(table(&now))).unwrap();

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

                // Every row but the unchanged is handed over; the tally
                // counts them all.
                let (rows, tally) = run_diff(&ctx, 1).await;
                let mut kept: Vec<(Option<String>, String)> =
                    rows.iter().map(|r| (r.key.clone(), format!("{:?}", r.op))).collect();
                kept.sort();
                let sent: Vec<_> = want.iter().filter(|w| w.1 != "Unchanged").cloned().collect();
                assert_eq!(kept, sent);
                for op in [DiffOp::Add, DiffOp::Change, DiffOp::Unchanged, DiffOp::Remove, DiffOp::Reject] {
                    let n = want.iter().filter(|w| w.1 == format!("{op:?}")).count() as u64;
                    assert_eq!(tally.count(op), n, "{op:?}");
                }
                assert_eq!(tally.model_rows(), now.len() as u64);
                // Created by this sync: the confirmed keys starting with `a`.
                for op in [DiffOp::Change, DiffOp::Unchanged, DiffOp::Remove] {
                    let n = want
                        .iter()
                        .filter(|w| w.1 == format!("{op:?}") && w.0.as_ref().is_some_and(|k| k.starts_with('a')))
                        .count() as u64;
                    assert_eq!(tally.of(op, true), n, "{op:?} created");
                }
                for r in &rows {
                    match r.op {
                        // Updates and removals name the confirmed record.
                        DiffOp::Change | DiffOp::Remove => {
                            assert_eq!(r.crm_id, r.key.as_ref().map(|k| format!("id-{k}")), "{r:?}");
                            assert_eq!(r.created, r.key.as_ref().is_some_and(|k| k.starts_with('a')), "{r:?}");
                        }
                        DiffOp::Add => assert_eq!((r.crm_id.as_ref(), r.created), (None, false)),
                        DiffOp::Reject => {
                            let reason = r.reason.as_deref().unwrap_or_default();
                            match r.key.as_deref().filter(|k| !k.is_empty()) {
                                None => assert_eq!(reason, "empty match key: email is null or blank"),
                                Some(k) => assert_eq!(reason, format!("duplicate match key: {} rows have email = {k}", counts[k])),
                            }
                        }
                        DiffOp::Unchanged => panic!("unchanged rows are only counted"),
                    }
                    // Removed rows carry no values; the others, the model's.
                    assert_eq!(r.values.len(), 2);
                }

                // In key buckets (a diff past the memory limit), one after
                // another: the same rows and counts, null and blank keys
                // included.
                let (by_bucket, bucket_tally) = run_diff(&ctx, 3).await;
                let mut bucketed: Vec<(Option<String>, String)> =
                    by_bucket.iter().map(|r| (r.key.clone(), format!("{:?}", r.op))).collect();
                bucketed.sort();
                assert_eq!(bucketed, kept);
                assert_eq!(bucket_tally, tally);
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
        let reads = |buckets: usize| {
            let p = super::diff_part(
                "\"contact_scores\"",
                "email",
                true,
                &["lead_score".into(), "persona".into()],
                super::SNAPSHOT,
                buckets,
                0,
            )
            .unwrap();
            format!(
                "{};\n{};\n{};\n",
                p.snapshot_keys, p.model_rows, p.snapshot_ids
            )
        };
        let cases = [
            ("sync_diff.sql", reads(1)),
            ("sync_diff_bucket.sql", reads(4)),
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
