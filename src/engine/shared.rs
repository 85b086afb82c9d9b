//! A CTE that a query reads more than once is computed once.
//!
//! DataFusion inlines every reference to a CTE, so a model whose `people`
//! CTE (a join) feeds four branches of a union and the final select joins
//! and scans it five times; the starter project's `contact_scores` computed
//! its 10M-touch join twice and its per-person aggregate twice. PostgreSQL
//! (since 12) and DuckDB materialize such CTEs; [`computed_once`] does the
//! same for ferry's model builds.
//!
//! In the query's plan, a CTE (or a view, or an ephemeral model, inlined as
//! one) is a subquery alias over its plan. Every such subtree that occurs
//! two or more times, identically (reading the same tables: two scans of
//! `generate_series` with other bounds plan alike but are not), and does
//! real work (a join, an aggregation, a window, a sort) is run once,
//! innermost first, into Arrow IPC stream files in the spill folder, and
//! each occurrence reads them back batch by batch. Subtrees that refer to
//! an outer query's columns or to a recursive CTE's work table, hold a
//! subquery expression, or call a volatile function (`random()`: two
//! samples must stay two) are left as they are. The files are removed when
//! the returned [`Shared`] is dropped, and a killed process's folder by the
//! next process that shares a CTE ([`sweep`]); with `[engine] spill =
//! false` nothing is shared.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::catalog::cte_worktable::CteWorkTable;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, SubqueryAlias};
use futures::StreamExt;

use crate::error::{Error, Result};

/// Keeps the files of the CTEs computed once until dropped.
#[derive(Default)]
pub struct Shared {
    dir: Option<std::path::PathBuf>,
    /// How many subtrees were computed once.
    pub computed: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Removes the folders of shared CTEs that a killed ferry left in `base`:
/// `ferry-shared-<pid>-...` whose process is gone (told by `/proc`; where
/// there is none, nothing is removed). A reused pid keeps its folder.
fn sweep(base: &std::path::Path) {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ferry-shared-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            tracing::debug!("removing {} (its process is gone)", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A folder name no other query of this process or another uses.
fn unique_folder() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "ferry-shared-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `plan` does work worth not repeating.
fn heavy(plan: &LogicalPlan) -> bool {
    let mut heavy = false;
    let _ = plan.apply(|n| {
        if matches!(
            n,
            LogicalPlan::Join(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Distinct(_)
        ) {
            heavy = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    heavy
}

/// Whether `plan` can be run on its own: no outer references, no
/// recursion, no subquery expressions (which may refer outward).
fn standalone(plan: &LogicalPlan) -> bool {
    let mut ok = true;
    let _ = plan.apply(|n| {
        let work_table = match n {
            LogicalPlan::TableScan(t) => source_as_provider(&t.source)
                .map(|p| p.is::<CteWorkTable>())
                .unwrap_or(true),
            _ => false,
        };
        let bad = work_table
            || matches!(n, LogicalPlan::RecursiveQuery(_))
            || n.contains_outer_reference()
            || n.expressions()
                .iter()
                .any(|e| e.is_volatile() || e.exists(|e| Ok(is_subquery(e))).unwrap_or(true));
        if bad {
            ok = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

fn is_subquery(e: &datafusion::logical_expr::Expr) -> bool {
    use datafusion::logical_expr::Expr;
    matches!(
        e,
        Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::ScalarSubquery(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..)
    )
}

/// The smallest subquery-alias subtree of `plan` that occurs at least
/// twice and is worth computing once (see the module docs).
fn repeated(plan: &LogicalPlan) -> Option<LogicalPlan> {
    // Plans compare equal without their scans' sources (a table function's
    // scan is named `f()` whatever its arguments): the occurrences must
    // also read the same table providers.
    let mut seen: HashMap<LogicalPlan, (usize, Option<Vec<usize>>)> = HashMap::new();
    let _ = plan.apply_with_subqueries(|n| {
        if let LogicalPlan::SubqueryAlias(_) = n {
            let tables = providers(n);
            let e = seen.entry(n.clone()).or_insert((0, tables.clone()));
            if e.1 != tables {
                e.1 = None;
            }
            e.0 += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    seen.into_iter()
        .filter(|(_, (count, tables))| *count >= 2 && tables.is_some())
        .map(|(n, _)| n)
        .filter(|n| match n {
            LogicalPlan::SubqueryAlias(SubqueryAlias { input, .. }) => {
                heavy(input) && standalone(input)
            }
            _ => false,
        })
        .min_by_key(size)
}

/// The table providers `plan` scans, in order, as addresses; `None` when
/// one cannot be told (a scan that is not a provider's).
fn providers(plan: &LogicalPlan) -> Option<Vec<usize>> {
    let mut out = Some(Vec::new());
    let _ = plan.apply_with_subqueries(|n| {
        if let LogicalPlan::TableScan(t) = n {
            match (source_as_provider(&t.source), out.as_mut()) {
                (Ok(p), Some(v)) => v.push(Arc::as_ptr(&p) as *const () as usize),
                _ => out = None,
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

fn size(plan: &LogicalPlan) -> usize {
    let mut n = 0;
    let _ = plan.apply(|_| {
        n += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    n
}

/// `df` with each CTE it reads more than once computed once (see the
/// module docs). Keep the returned [`Shared`] until `df` has run.
pub async fn computed_once(df: DataFrame) -> Result<(DataFrame, Shared)> {
    let mut shared = Shared::default();
    if !super::memory::settings().spill {
        return Ok((df, shared));
    }
    let (state, mut plan) = df.into_parts();
    // A bound: each round removes one repeated subtree.
    for _ in 0..64 {
        let Some(subtree) = repeated(&plan) else {
            break;
        };
        let LogicalPlan::SubqueryAlias(SubqueryAlias { input, alias, .. }) = &subtree else {
            break;
        };
        let dir = shared.dir.get_or_insert_with(|| {
            let base = super::memory::settings()
                .spill_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            static SWEPT: std::sync::Once = std::sync::Once::new();
            SWEPT.call_once(|| sweep(&base));
            base.join(unique_folder())
        });
        let folder = dir.join(format!("{}", shared.computed));
        std::fs::create_dir_all(&folder).map_err(|e| {
            Error::Input(format!(
                "cannot create {} for a CTE computed once: {e}; check [engine] spill_dir \
                 (its folder must be writable)",
                folder.display()
            ))
        })?;
        let schema = write_ipc(
            DataFrame::new(state.clone(), input.as_ref().clone()),
            &folder,
        )
        .await?;
        tracing::debug!("CTE {alias} computed once into {}", folder.display());
        let url = folder_url(&folder)?;
        let options = ListingOptions::new(Arc::new(ArrowFormat)).with_file_extension(".arrow");
        let table = ListingTable::try_new(
            ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(schema),
        )?;
        let name = format!("__ferry_shared_{}", shared.computed);
        let scan = LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(table)), None)?
            .alias(alias.clone())?
            .build()?;
        plan = plan
            .transform_up_with_subqueries(|n| {
                if n == subtree {
                    Ok(Transformed::yes(scan.clone()))
                } else {
                    Ok(Transformed::no(n))
                }
            })?
            .data;
        shared.computed += 1;
    }
    Ok((DataFrame::new(state, plan), shared))
}

/// The listing URL of `folder`, made from the path itself (a `[` or `*` in
/// it is not a glob), absolute (`[engine] spill_dir` is relative to a
/// project folder that may itself be given as `.`).
fn folder_url(folder: &std::path::Path) -> Result<ListingTableUrl> {
    let bad = |e: String| {
        Error::Input(format!(
            "the spill folder {} cannot be read back ({e}); check [engine] spill_dir",
            folder.display()
        ))
    };
    let absolute = std::path::absolute(folder).map_err(|e| bad(e.to_string()))?;
    let url = url::Url::from_directory_path(&absolute)
        .map_err(|()| bad("not a path a file URL can name".into()))?;
    Ok(ListingTableUrl::try_new(url, None)?)
}

/// `batch` with its string and binary views' buffers reduced to the bytes
/// its rows use. A view column sliced out of a larger batch (a join's or an
/// aggregation's output) still holds the whole buffers, which the IPC
/// writer would write in full for every batch.
fn compact(
    batch: datafusion::arrow::record_batch::RecordBatch,
) -> Result<datafusion::arrow::record_batch::RecordBatch> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::DataType;
    if !batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView))
    {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as _,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as _,
            _ => c.clone(),
        })
        .collect();
    Ok(datafusion::arrow::record_batch::RecordBatch::try_new(
        batch.schema(),
        columns,
    )?)
}

/// Run `df` into one Arrow IPC stream file per output partition in
/// `folder` (the stream format: read back batch by batch, never split into
/// byte ranges read whole; dictionaries may change between batches);
/// returns the files' schema.
async fn write_ipc(
    df: DataFrame,
    folder: &std::path::Path,
) -> Result<datafusion::arrow::datatypes::SchemaRef> {
    let streams = df.execute_stream_partitioned().await?;
    let mut schema = None;
    // One task per partition, so partitions are computed in parallel; the
    // set aborts the others when one fails or the build is dropped.
    let mut writers = tokio::task::JoinSet::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let path = folder.join(format!("part-{i}.arrow"));
        let s = stream.schema();
        schema.get_or_insert(s.clone());
        writers.spawn(async move {
            let file = std::fs::File::create(&path)
                .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
            let mut w = StreamWriter::try_new(std::io::BufWriter::new(file), &s)?;
            while let Some(batch) = stream.next().await {
                w.write(&compact(batch?)?)?;
            }
            w.finish()?;
            Ok::<(), Error>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.map_err(|e| Error::Internal(format!("a shared CTE's writer: {e}")))??;
    }
    match schema {
        Some(s) => Ok(s),
        None => Err(Error::Internal("a plan with no output partitions".into())),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    async fn rows(df: DataFrame) -> String {
        pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string()
    }

    async fn both(sql: &str) -> (String, String, usize) {
        let ctx = super::super::memory_session();
        let inlined = rows(ctx.sql(sql).await.unwrap()).await;
        let (df, shared) = computed_once(ctx.sql(sql).await.unwrap()).await.unwrap();
        (inlined, rows(df).await, shared.computed)
    }

    /// A CTE read twice is computed once, the rows are the query's, and
    /// the files go when the result is dropped; a CTE read once is inlined.
    #[tokio::test]
    async fn a_cte_read_twice_is_computed_once_and_its_files_removed() {
        let ctx = super::super::memory_session();
        let sql = "with sums as (select k, sum(v) as s from (values (1, 10), (2, 5), (2, 7)) as t(k, v) group by k), \
                   small as (select k from (values (1), (2)) as s(k)) \
                   select a.k, a.s + b.s as twice from sums a join sums b on a.k = b.k \
                   join small on small.k = a.k order by a.k";
        let (df, shared) = computed_once(ctx.sql(sql).await.unwrap()).await.unwrap();
        // `sums` (an aggregation) is shared; `small` (read once) is not.
        assert_eq!(shared.computed, 1);
        let dir = shared.dir.clone().expect("a folder");
        assert!(dir.exists());
        let out = rows(df).await;
        assert!(out.contains("| 1 | 20    |"), "{out}");
        assert!(out.contains("| 2 | 24    |"), "{out}");
        drop(shared);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }

    /// Nested CTEs read more than once: the inner one is computed first and
    /// the outer one reads it; the result is the inlined query's.
    #[tokio::test]
    async fn nested_shared_ctes_give_the_inlined_rows() {
        let (inlined, shared, computed) = both(
            "with base as (select v % 7 as k, sum(v) as s from generate_series(1, 1000) as g(v) group by 1), \
             ranked as (select k, s, rank() over (order by s desc) as r from base), \
             top as (select * from ranked where r <= 3) \
             select (select count(*) from base) as keys, t1.k, t2.s \
             from top t1 join top t2 on t1.k = t2.k join base b on b.k = t1.k order by t1.k",
        )
        .await;
        assert!(computed >= 1);
        assert_eq!(shared, inlined);
    }

    /// Regression (review): two subqueries alike but for a table
    /// function's arguments plan equal (the scan is named
    /// `generate_series()` either way); they are not one.
    #[tokio::test]
    async fn subqueries_over_a_table_function_with_other_arguments_stay_apart() {
        let (inlined, shared, computed) = both(
            "select m from (select max(value) m from generate_series(1, 10)) s \
             union all select m from (select max(value) m from generate_series(1, 1000)) s order by m",
        )
        .await;
        assert_eq!(computed, 0);
        assert_eq!(shared, inlined);
        assert!(shared.contains("| 1000 |"), "{shared}");
    }

    /// Review: a killed process's folder is removed by the next process
    /// that shares a CTE; a live process's folder stays.
    #[test]
    fn folders_of_processes_that_are_gone_are_swept() {
        let base = std::env::temp_dir().join(unique_folder());
        // No process has this id (Linux's pid_max is at most 2^22).
        let gone = base.join("ferry-shared-4000000000-0-0");
        let live = base.join(format!("ferry-shared-{}-7-0", std::process::id()));
        let other = base.join("not-ferrys");
        for d in [&gone, &live, &other] {
            std::fs::create_dir_all(d.join("0")).unwrap();
        }
        sweep(&base);
        if std::path::Path::new("/proc/self").exists() {
            assert!(!gone.exists());
        }
        assert!(live.exists() && other.exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Regression (review of the change): a relative spill folder (the
    /// project given as `.`) is made absolute, and a `[` in the path is
    /// the folder's name, not a glob: the file in it is read back.
    #[tokio::test]
    async fn relative_and_bracketed_spill_folders_name_themselves() {
        let relative = folder_url(std::path::Path::new("scratch/0")).unwrap();
        assert!(relative.as_str().starts_with("file:///"), "{relative}");
        assert!(relative.as_str().ends_with("/scratch/0/"), "{relative}");

        let folder = std::env::temp_dir().join(unique_folder()).join("[acme]");
        std::fs::create_dir_all(&folder).unwrap();
        let ctx = super::super::memory_session();
        let df = ctx
            .sql("select * from generate_series(1, 3)")
            .await
            .unwrap();
        let schema = write_ipc(df, &folder).await.unwrap();
        let table = ListingTable::try_new(
            ListingTableConfig::new(folder_url(&folder).unwrap())
                .with_listing_options(
                    ListingOptions::new(Arc::new(ArrowFormat)).with_file_extension(".arrow"),
                )
                .with_schema(schema),
        )
        .unwrap();
        ctx.register_table("back", Arc::new(table)).unwrap();
        let out = rows(ctx.sql("select count(*) as n from back").await.unwrap()).await;
        let _ = std::fs::remove_dir_all(folder.parent().unwrap());
        assert!(out.contains("| 3 |"), "{out}");
    }

    /// A subquery comparison (`> any (...)`) keeps its CTE inlined.
    #[tokio::test]
    async fn a_cte_holding_a_subquery_comparison_is_not_shared() {
        let (inlined, shared, computed) = both(
            "with big as (select k, count(*) as n from (values (1), (2), (2)) as t(k) group by k \
             having k > any (select 1)) \
             select a.k from big a join big b on a.k = b.k order by a.k",
        )
        .await;
        assert_eq!(computed, 0);
        assert_eq!(shared, inlined);
    }

    /// Two samples drawn with random() stay two draws.
    #[tokio::test]
    async fn a_cte_calling_a_volatile_function_is_not_shared() {
        let (_, _, computed) = both(
            "with draws as (select k, max(random()) as r from (values (1), (2)) as t(k) group by k) \
             select a.k from draws a join draws b on a.k = b.k",
        )
        .await;
        assert_eq!(computed, 0);
    }

    /// Regression (review): a dictionary column whose dictionary changes
    /// from batch to batch is written (the IPC file format refused it).
    #[tokio::test]
    async fn dictionary_columns_are_shared() {
        let (inlined, shared, computed) = both(
            "with d as (select k, arrow_cast(concat('v', cast(k % 50 as varchar)), 'Dictionary(Int32, Utf8)') as v, count(*) as n \
             from generate_series(1, 20000) as g(k) group by 1, 2) \
             select count(*), count(distinct a.v) from d a join d b on a.k = b.k",
        )
        .await;
        assert_eq!(computed, 1);
        assert_eq!(shared, inlined);
    }
}
