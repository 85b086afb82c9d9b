//! Model contracts: `contract: {enforced: true}` with declared column names
//! and `data_type`s. The planned output schema is checked before anything
//! is written; a mismatch names the column.

use arrow::datatypes::DataType;
use datafusion::common::DFSchema;

use super::project::Model;
use crate::error::{Error, Result};

/// Type families a declared SQL type accepts.
fn matches(declared: &str, actual: &DataType) -> Option<bool> {
    use DataType::*;
    let d = declared.trim().to_ascii_lowercase();
    let base = d.split('(').next().unwrap_or("").trim();
    let ok = match base {
        "varchar" | "text" | "string" | "char" | "character varying" | "character" => {
            matches!(actual, Utf8 | LargeUtf8 | Utf8View)
        }
        "bigint" | "int8" | "long" => matches!(actual, Int64),
        "int" | "integer" | "int4" => matches!(actual, Int32),
        "smallint" | "int2" => matches!(actual, Int16),
        "tinyint" => matches!(actual, Int8),
        "double" | "double precision" | "float8" => matches!(actual, Float64),
        "float" | "real" | "float4" => matches!(actual, Float32),
        "boolean" | "bool" => matches!(actual, Boolean),
        "date" => matches!(actual, Date32 | Date64),
        "timestamp" | "timestamptz" | "datetime" => matches!(actual, Timestamp(_, _)),
        "decimal" | "numeric" => {
            let args: Vec<u8> = d
                .split_once('(')
                .map(|(_, r)| {
                    r.trim_end_matches(')')
                        .split(',')
                        .filter_map(|x| x.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            match (actual, args.as_slice()) {
                (Decimal128(p, s), [dp, ds]) => p == dp && *s as i64 == *ds as i64,
                (Decimal128(p, _), [dp]) => p == dp,
                (Decimal128(..) | Decimal256(..), []) => true,
                _ => false,
            }
        }
        _ => return None,
    };
    Some(ok)
}

/// Check a model's planned output against its contract (if enforced).
pub fn check(model: &Model, schema: &DFSchema) -> Result<()> {
    if !model.config.contract_enforced {
        return Ok(());
    }
    let fail = |msg: String| Error::Input(format!("{}: contract: {msg}", model.path));
    let actual: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    for c in &model.columns {
        let Some((_, t)) = actual.iter().find(|(n, _)| *n == c.name) else {
            return Err(fail(format!(
                "column {} is declared but the model does not return it",
                c.name
            )));
        };
        let Some(declared) = &c.data_type else {
            return Err(fail(format!(
                "column {} needs a data_type when the contract is enforced",
                c.name
            )));
        };
        match matches(declared, t) {
            Some(true) => {}
            Some(false) => {
                return Err(fail(format!(
                    "column {} is declared {declared} but the model returns {t}; \
                     cast it in the model or change the declared type",
                    c.name
                )));
            }
            None => {
                return Err(fail(format!(
                    "column {}: unknown data_type {declared:?} (use varchar, bigint, int, \
                     double, boolean, date, timestamp, decimal(p,s)...)",
                    c.name
                )));
            }
        }
    }
    for (n, _) in &actual {
        if !model.columns.iter().any(|c| c.name == *n) {
            return Err(fail(format!(
                "the model returns column {n}, which the contract does not declare"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_match_their_arrow_families() {
        assert_eq!(matches("varchar", &DataType::Utf8View), Some(true));
        assert_eq!(matches("bigint", &DataType::Int64), Some(true));
        assert_eq!(matches("bigint", &DataType::Int32), Some(false));
        assert_eq!(
            matches("decimal(18,2)", &DataType::Decimal128(18, 2)),
            Some(true)
        );
        assert_eq!(
            matches("decimal(18,2)", &DataType::Decimal128(18, 4)),
            Some(false)
        );
        assert_eq!(matches("geometry", &DataType::Utf8), None);
    }
}
