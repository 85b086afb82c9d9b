//! Seeds: CSV files under `seeds/` loaded as Delta tables (`ferry seed`).
//!
//! Types are inferred from the file (integers, doubles, booleans, dates,
//! text); `column_types:` under the seed's `config:` in a schema file
//! overrides them with SQL types (`varchar`, `bigint`, `date`, ...).

use std::collections::BTreeSet;
use std::time::Instant;

use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::CsvReadOptions;

use super::delta::{self, SEEDS};
use super::project::{ModelProject, Seed};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// What loading one seed did.
#[derive(Debug, Clone)]
pub struct SeedResult {
    pub name: String,
    pub rows: u64,
    pub seconds: f64,
}

pub(crate) async fn read(ctx: &SessionContext, seed: &Seed) -> Result<DataFrame> {
    let path = seed.path.to_string_lossy().to_string();
    let fail = |e: datafusion::error::DataFusionError| {
        Error::Input(format!("{}: {e}", seed.path.display()))
    };
    let df = ctx
        .read_csv(
            &path,
            CsvReadOptions::new()
                .has_header(true)
                .schema_infer_max_records(100_000),
        )
        .await
        .map_err(fail)?;
    if seed.column_types.is_empty() {
        return Ok(df);
    }
    for col in seed.column_types.keys() {
        if df.schema().field_with_unqualified_name(col).is_err() {
            return Err(Error::Input(format!(
                "{}: column_types names column {col:?}, which the file does not have",
                seed.path.display()
            )));
        }
    }
    let exprs: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| match seed.column_types.get(f.name()) {
            Some(t) => format!("cast(\"{0}\" as {t}) as \"{0}\"", f.name()),
            None => format!("\"{}\"", f.name()),
        })
        .collect();
    let tmp = format!("__ferry_seed_{}", seed.name);
    ctx.register_table(&tmp, df.into_view())?;
    let out = ctx
        .sql(&format!("select {} from {tmp}", exprs.join(", ")))
        .await
        .map_err(fail)?;
    Ok(out)
}

/// Load seeds (all, or those in `only`) into the lake and register them.
pub async fn load(
    ctx: &SessionContext,
    lake: &Lake,
    project: &ModelProject,
    only: Option<&BTreeSet<String>>,
) -> Result<Vec<SeedResult>> {
    let mut out = Vec::new();
    for seed in &project.seeds {
        if only.is_some_and(|o| !o.contains(&seed.name)) {
            continue;
        }
        let started = Instant::now();
        let df = read(ctx, seed).await?;
        let url = delta::table_url(SEEDS, &seed.name)?;
        let table = delta::overwrite(lake, &url, df)
            .await
            .map_err(|e| Error::Input(format!("{}: {e}", seed.path.display())))?;
        delta::register(ctx, &seed.name, &table).await?;
        super::relation::register_one(ctx, project, &seed.name).await?;
        let rows = super::run::count_rows(ctx, &seed.name).await?;
        out.push(SeedResult {
            name: seed.name.clone(),
            rows,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// For planning without loading: seeds not yet in the lake are read
/// straight from their CSV files so `compile` sees their columns.
pub async fn register_for_planning(
    ctx: &SessionContext,
    _lake: &Lake,
    project: &ModelProject,
) -> Result<()> {
    for seed in &project.seeds {
        if ctx.table_exist(seed.name.as_str()).unwrap_or(false) {
            continue;
        }
        let df = read(ctx, seed).await?;
        ctx.register_table(seed.name.as_str(), df.into_view())?;
    }
    super::relation::register(ctx, project).await
}
