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
//! two or more times, identically, and does real work (a join, an
//! aggregation, a window, a sort) is run once, innermost first, into Arrow
//! IPC files in the spill folder, and each occurrence reads the files. Its
//! rows are then those of a single evaluation, as in PostgreSQL: a
//! `random()` or `now()` inside gives every reader the same values. Subtrees
//! that refer to an outer query's columns are left as they are. The files
//! are removed when the returned [`Shared`] is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
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
        let bad = matches!(n, LogicalPlan::RecursiveQuery(_))
            || n.contains_outer_reference()
            || n.expressions()
                .iter()
                .any(|e| e.exists(|e| Ok(is_subquery(e))).unwrap_or(true));
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
            | Expr::OuterReferenceColumn(..)
    )
}

/// The smallest subquery-alias subtree of `plan` that occurs at least
/// twice and is worth computing once (see the module docs).
fn repeated(plan: &LogicalPlan) -> Option<LogicalPlan> {
    let mut seen: HashMap<LogicalPlan, usize> = HashMap::new();
    let _ = plan.apply_with_subqueries(|n| {
        if let LogicalPlan::SubqueryAlias(_) = n {
            *seen.entry(n.clone()).or_insert(0) += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    seen.into_iter()
        .filter(|(_, count)| *count >= 2)
        .map(|(n, _)| n)
        .filter(|n| match n {
            LogicalPlan::SubqueryAlias(SubqueryAlias { input, .. }) => {
                heavy(input) && standalone(input)
            }
            _ => false,
        })
        .min_by_key(size)
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
            super::memory::settings()
                .spill_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir)
                .join(unique_folder())
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
        let url = ListingTableUrl::parse(format!("{}/", folder.display()))?;
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

/// Run `df` into one Arrow IPC file per output partition in `folder`;
/// returns the files' schema.
async fn write_ipc(
    df: DataFrame,
    folder: &std::path::Path,
) -> Result<datafusion::arrow::datatypes::SchemaRef> {
    let streams = df.execute_stream_partitioned().await?;
    let mut schema = None;
    let writers = streams.into_iter().enumerate().map(|(i, mut stream)| {
        let path = folder.join(format!("part-{i}.arrow"));
        let s = stream.schema();
        schema.get_or_insert(s.clone());
        tokio::spawn(async move {
            let file = std::fs::File::create(&path)
                .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
            let mut w = FileWriter::try_new(std::io::BufWriter::new(file), &s)?;
            while let Some(batch) = stream.next().await {
                w.write(&compact(batch?)?)?;
            }
            w.finish()?;
            Ok::<(), Error>(())
        })
    });
    // One task per partition, so partitions are computed in parallel.
    for done in futures::future::join_all(writers).await {
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

    /// A CTE read twice is computed once: both readers see the same
    /// `random()` (inlined, each reader drew its own), the rows are those
    /// of the query, and the files go when the result is dropped.
    #[tokio::test]
    async fn a_cte_read_twice_is_computed_once_and_its_files_removed() {
        let ctx = super::super::memory_session();
        let sql = "with draws as (select k, max(random()) as r from (values (1), (2), (2)) as t(k) group by k), \
                   small as (select k from (values (1)) as s(k)) \
                   select a.k, a.r = b.r as same, count(*) over () as n \
                   from draws a join draws b on a.k = b.k join small on small.k = a.k order by a.k";
        let (df, shared) = computed_once(ctx.sql(sql).await.unwrap()).await.unwrap();
        // `draws` (an aggregation) is shared; `small` (read once) is not.
        assert_eq!(shared.computed, 1);
        let dir = shared.dir.clone().expect("a folder");
        assert!(dir.exists());
        let out = rows(df).await;
        assert!(out.contains("| 1 | true | 1 |"), "{out}");
        drop(shared);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }

    /// Nested CTEs read more than once: the inner one is computed first and
    /// the outer one reads it; the result is the inlined query's.
    #[tokio::test]
    async fn nested_shared_ctes_give_the_inlined_rows() {
        let ctx = super::super::memory_session();
        let sql = "with base as (select v % 7 as k, sum(v) as s from generate_series(1, 1000) as g(v) group by 1), \
                   ranked as (select k, s, rank() over (order by s desc) as r from base), \
                   top as (select * from ranked where r <= 3) \
                   select (select count(*) from base) as keys, t1.k, t2.s \
                   from top t1 join top t2 on t1.k = t2.k join base b on b.k = t1.k order by t1.k";
        let inlined = rows(ctx.sql(sql).await.unwrap()).await;
        let (df, shared) = computed_once(ctx.sql(sql).await.unwrap()).await.unwrap();
        assert!(shared.computed >= 1);
        assert_eq!(rows(df).await, inlined);
    }
}
