//! Stream schemas and how a new batch fits them.
//!
//! A stream's schema is the union of every column it has ever landed, stored
//! as numbered, write-once versions under `_ferry/schemas/<source>/<stream>/`.
//! [`plan`] decides how a batch maps onto it:
//! - same type, or a lossless widening (Int32 → Int64, Int64 → Float64,
//!   string flavours): the value is cast and lands in the column;
//! - a new column: it is added (older files read it as null);
//! - a changed type: the values land in a variant column `<column>__<type>`
//!   (as dlt does) and a warning is recorded; nothing is coerced silently;
//! - a column that is null throughout and new: skipped until a value arrives.

use std::sync::Arc;

use arrow::array::{ArrayRef, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{self, LOADED_AT_COLUMN, RUN_ID_COLUMN, StreamRef};
use crate::error::{Error, Result};

/// One column of a stream schema, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// Arrow type in its display form (`Int64`, `Utf8`, `Timestamp(µs, "UTC")`).
    #[serde(rename = "type")]
    pub data_type: String,
}

/// A stored version of a stream's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSchema {
    pub version: u64,
    pub columns: Vec<ColumnDef>,
}

impl StreamSchema {
    /// The stream's data columns as Arrow fields (all nullable: older files
    /// lack newer columns).
    pub fn fields(&self) -> Result<Vec<Field>> {
        self.columns
            .iter()
            .map(|c| {
                let dt: DataType = c.data_type.parse().map_err(|e| {
                    Error::Internal(format!(
                        "stored schema v{} has column {} of unreadable type {:?}: {e}",
                        self.version, c.name, c.data_type
                    ))
                })?;
                Ok(Field::new(&c.name, dt, true))
            })
            .collect()
    }

    /// The table schema: data columns, then ferry's two columns.
    pub fn table_schema(&self) -> Result<SchemaRef> {
        let mut fields = self.fields()?;
        fields.extend(ferry_fields());
        Ok(Arc::new(Schema::new(fields)))
    }
}

/// `_ferry_run_id` and `_ferry_loaded_at`.
pub fn ferry_fields() -> [Field; 2] {
    [
        Field::new(RUN_ID_COLUMN, DataType::Utf8, false),
        Field::new(
            LOADED_AT_COLUMN,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]
}

/// A short, stable fingerprint of a schema (column names and types in order).
pub fn fingerprint(schema: &Schema) -> String {
    let mut h = Sha256::new();
    for f in schema.fields() {
        h.update(f.name().as_bytes());
        h.update([0]);
        h.update(f.data_type().to_string().as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The latest stored schema of a stream, if it has landed anything.
pub async fn load(store: &dyn ObjectStore, stream: &StreamRef) -> Result<Option<StreamSchema>> {
    let prefix = layout::schema_prefix(stream);
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    let Some(latest) = metas
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".json"))
        .max_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()))
    else {
        return Ok(None);
    };
    let bytes = store.get(&latest.location).await?.bytes().await?;
    let schema: StreamSchema = serde_json::from_slice(&bytes).map_err(|e| {
        Error::Internal(format!(
            "stored schema {} is not valid: {e}",
            latest.location
        ))
    })?;
    Ok(Some(schema))
}

/// Store a new schema version. Returns `false` if another writer stored that
/// version first (reload and plan again).
pub async fn save(
    store: &dyn ObjectStore,
    stream: &StreamRef,
    schema: &StreamSchema,
) -> Result<bool> {
    let body = serde_json::to_vec_pretty(schema)
        .map_err(|e| Error::Internal(format!("cannot encode schema: {e}")))?;
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(
            &layout::schema_file(stream, schema.version),
            PutPayload::from(body),
            opts,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Make sure the stream's stored schema has `columns`, for a connector that
/// knows its columns before any value arrives (HubSpot properties are
/// strings whether or not a record has one set). Columns already stored
/// keep their type; the stream is registered (empty) even before its first
/// file, so models that read it plan. Safe against concurrent writers.
pub async fn declare(
    store: &dyn ObjectStore,
    stream: &StreamRef,
    columns: &[(String, DataType)],
) -> Result<()> {
    let input = Schema::new(
        columns
            .iter()
            .map(|(n, t)| Field::new(n, t.clone(), true))
            .collect::<Vec<_>>(),
    );
    for _ in 0..10 {
        let current = load(store, stream).await?;
        let plan = plan(current.as_ref(), &input)?;
        if current.is_some() && plan.new_columns.is_empty() {
            return Ok(());
        }
        if save(store, stream, &plan.evolve(current.as_ref())).await? {
            return Ok(());
        }
    }
    Err(Error::Internal(format!(
        "could not store the declared schema of {stream}: other writers kept changing it"
    )))
}

/// Where one input column goes.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMove {
    /// Index in the input batch.
    pub input: usize,
    /// Target column name in the stream schema.
    pub target: String,
}

/// How a batch fits a stream schema.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Input columns that land, and where.
    pub moves: Vec<ColumnMove>,
    /// Columns to add to the stream schema, in order.
    pub new_columns: Vec<ColumnDef>,
    /// Type changes routed to variant columns (one message each).
    pub type_changes: Vec<String>,
    /// Input columns dropped, with why (all-null new columns, reserved names).
    pub dropped: Vec<String>,
}

impl Plan {
    /// Whether the batch needs the schema to change (what `freeze` forbids).
    pub fn changes_schema(&self) -> bool {
        !self.new_columns.is_empty() || !self.type_changes.is_empty()
    }

    /// A one-line account of the changes, for errors and the ingestion log.
    pub fn describe_changes(&self) -> String {
        let mut parts: Vec<String> = self
            .new_columns
            .iter()
            .map(|c| format!("new column {} ({})", c.name, c.data_type))
            .collect();
        parts.extend(self.type_changes.iter().cloned());
        parts.join("; ")
    }

    /// The stream schema after this plan: `current` plus the new columns.
    pub fn evolve(&self, current: Option<&StreamSchema>) -> StreamSchema {
        let mut columns = current.map(|s| s.columns.clone()).unwrap_or_default();
        columns.extend(self.new_columns.iter().cloned());
        StreamSchema {
            version: current.map(|s| s.version).unwrap_or(0) + 1,
            columns,
        }
    }
}

/// Decide how `input` maps onto `current` (`None`: the stream is new).
pub fn plan(current: Option<&StreamSchema>, input: &Schema) -> Result<Plan> {
    let mut plan = Plan::default();
    let existing: Vec<(String, DataType)> = match current {
        Some(s) => s
            .fields()?
            .into_iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect(),
        None => Vec::new(),
    };
    let lookup = |name: &str, plan: &Plan| -> Option<DataType> {
        existing
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .or_else(|| {
                plan.new_columns
                    .iter()
                    .find(|c| c.name == name)
                    .and_then(|c| c.data_type.parse().ok())
            })
    };
    for (i, field) in input.fields().iter().enumerate() {
        let name = field.name();
        if name == RUN_ID_COLUMN || name == LOADED_AT_COLUMN {
            plan.dropped.push(format!(
                "input column {name} replaced: ferry sets it on every landed row"
            ));
            continue;
        }
        let incoming = normalize(field.data_type());
        match lookup(name, &plan) {
            None => {
                if incoming == DataType::Null {
                    plan.dropped.push(format!(
                        "column {name} is null in every row and new: it is added when a value arrives"
                    ));
                    continue;
                }
                plan.new_columns.push(ColumnDef {
                    name: name.clone(),
                    data_type: incoming.to_string(),
                });
                plan.moves.push(ColumnMove {
                    input: i,
                    target: name.clone(),
                });
            }
            Some(existing_type) => {
                if incoming == DataType::Null || fits(&incoming, &existing_type) {
                    plan.moves.push(ColumnMove {
                        input: i,
                        target: name.clone(),
                    });
                    continue;
                }
                let variant = format!("{name}__{}", type_slug(&incoming));
                match lookup(&variant, &plan) {
                    Some(vt) if fits(&incoming, &vt) => {}
                    Some(vt) => {
                        return Err(Error::Input(format!(
                            "column {name} arrived as {incoming}, and its variant column {variant} \
                             already holds {vt}: rename the input column"
                        )));
                    }
                    None => plan.new_columns.push(ColumnDef {
                        name: variant.clone(),
                        data_type: incoming.to_string(),
                    }),
                }
                plan.type_changes.push(format!(
                    "column {name} is {existing_type} but arrived as {incoming}: values landed in {variant}"
                ));
                plan.moves.push(ColumnMove {
                    input: i,
                    target: variant,
                });
            }
        }
    }
    Ok(plan)
}

/// Types ferry stores as another, equivalent type.
fn normalize(t: &DataType) -> DataType {
    match t {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, v) => normalize(v),
        other => other.clone(),
    }
}

/// Whether values of type `from` land in a column of type `to` without loss
/// of meaning (exact match or a widening).
#[allow(clippy::match_like_matches_macro)] // a table of widenings reads better as arms
pub fn fits(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let from = normalize(from);
    if &from == to {
        return true;
    }
    match (&from, to) {
        (Null, _) => true,
        (Int8, Int16 | Int32 | Int64) | (Int16, Int32 | Int64) | (Int32, Int64) => true,
        (UInt8, Int16 | Int32 | Int64 | UInt16 | UInt32 | UInt64)
        | (UInt16, Int32 | Int64 | UInt32 | UInt64)
        | (UInt32, Int64 | UInt64) => true,
        (Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32, Float64) => {
            true
        }
        (Float16, Float32 | Float64) => true,
        _ => false,
    }
}

/// The `<type>` part of a variant column's name.
pub fn type_slug(t: &DataType) -> String {
    use DataType::*;
    match normalize(t) {
        Boolean => "bool".into(),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => "bigint".into(),
        Float16 | Float32 | Float64 => "double".into(),
        Utf8 => "text".into(),
        Binary | FixedSizeBinary(_) => "binary".into(),
        Date32 | Date64 => "date".into(),
        Timestamp(_, _) => "timestamp".into(),
        Time32(_) | Time64(_) => "time".into(),
        Decimal32(..) | Decimal64(..) | Decimal128(..) | Decimal256(..) => "decimal".into(),
        List(_) | LargeList(_) | FixedSizeList(..) | ListView(_) | LargeListView(_) => {
            "list".into()
        }
        Struct(_) => "struct".into(),
        Map(..) => "map".into(),
        other => other
            .to_string()
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect(),
    }
}

/// Reshape `batch` to `target` (the stream's data columns) following `plan`:
/// moved columns are cast to their target type, absent ones are null.
pub fn align(batch: &RecordBatch, plan: &Plan, target: &[Field]) -> Result<Vec<ArrayRef>> {
    let rows = batch.num_rows();
    let mut out = Vec::with_capacity(target.len());
    for field in target {
        let moved = plan.moves.iter().find(|m| &m.target == field.name());
        let array = match moved {
            Some(m) => {
                let col = batch.column(m.input);
                if col.data_type() == field.data_type() {
                    col.clone()
                } else {
                    arrow::compute::cast(col, field.data_type())?
                }
            }
            None => new_null_array(field.data_type(), rows),
        };
        out.push(array);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(cols: &[(&str, DataType)]) -> Schema {
        Schema::new(
            cols.iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    fn stored(cols: &[(&str, DataType)]) -> StreamSchema {
        StreamSchema {
            version: 1,
            columns: cols
                .iter()
                .map(|(n, t)| ColumnDef {
                    name: n.to_string(),
                    data_type: t.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn stored_types_round_trip_through_their_display_form() {
        for t in [
            DataType::Int64,
            DataType::Float64,
            DataType::Boolean,
            DataType::Utf8,
            DataType::Date32,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Decimal128(18, 2),
        ] {
            let back: DataType = t.to_string().parse().unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn new_stream_takes_the_batch_schema_minus_all_null_columns() {
        let p = plan(
            None,
            &schema(&[("a", DataType::Int64), ("n", DataType::Null)]),
        )
        .unwrap();
        assert_eq!(p.new_columns.len(), 1);
        assert_eq!(p.dropped.len(), 1);
        assert_eq!(p.evolve(None).version, 1);
    }

    #[test]
    fn widening_is_not_a_change() {
        let cur = stored(&[("a", DataType::Float64), ("s", DataType::Utf8)]);
        let p = plan(
            Some(&cur),
            &schema(&[("a", DataType::Int64), ("s", DataType::Utf8View)]),
        )
        .unwrap();
        assert!(!p.changes_schema());
    }

    #[test]
    fn changed_type_goes_to_a_variant_column() {
        let cur = stored(&[("amount", DataType::Int64)]);
        let p = plan(Some(&cur), &schema(&[("amount", DataType::Utf8)])).unwrap();
        assert_eq!(p.moves[0].target, "amount__text");
        assert_eq!(p.new_columns[0].name, "amount__text");
        assert_eq!(p.type_changes.len(), 1);
        // Once the variant exists, the same change reuses it without adding columns.
        let cur2 = p.evolve(Some(&cur));
        let p2 = plan(Some(&cur2), &schema(&[("amount", DataType::Utf8)])).unwrap();
        assert!(p2.new_columns.is_empty());
        assert_eq!(p2.moves[0].target, "amount__text");
        // Float into an integer column would lose the fraction: a variant, not a cast.
        let p3 = plan(Some(&cur), &schema(&[("amount", DataType::Float64)])).unwrap();
        assert_eq!(p3.moves[0].target, "amount__double");
    }

    #[test]
    fn fingerprint_depends_on_names_and_types() {
        let a = fingerprint(&schema(&[("a", DataType::Int64)]));
        assert_eq!(a, fingerprint(&schema(&[("a", DataType::Int64)])));
        assert_ne!(a, fingerprint(&schema(&[("a", DataType::Utf8)])));
        assert_ne!(a, fingerprint(&schema(&[("b", DataType::Int64)])));
    }
}
