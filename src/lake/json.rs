//! JSON records to Arrow, with a predictable shape.
//!
//! - Scalars become typed columns: booleans, 64-bit integers, doubles, text.
//!   Integers and doubles in one column make it a double.
//! - A top-level object is flattened one level: `{"company": {"name": ..}}`
//!   becomes the column `company__name`.
//! - Anything deeper, and every array, is kept as JSON text in its column, for
//!   models to unpack with the JSON functions.
//! - A column's type is that of its first non-null value; values of another
//!   kind in the same batch land in a variant column `<column>__<type>`, the
//!   same rule the lake applies across batches.
//! - Strings are never guessed into dates: staging models cast them.
//! - Columns appear in first-seen order; keys of one object are taken in
//!   alphabetical order.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, NullArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::{Map, Value};

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Text,
}

impl Kind {
    fn slug(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Int => "bigint",
            Kind::Float => "double",
            Kind::Text => "text",
        }
    }
}

#[derive(Debug, Clone)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Val {
    fn kind(&self) -> Option<Kind> {
        match self {
            Val::Null => None,
            Val::Bool(_) => Some(Kind::Bool),
            Val::Int(_) => Some(Kind::Int),
            Val::Float(_) => Some(Kind::Float),
            Val::Text(_) => Some(Kind::Text),
        }
    }

    fn from_value(v: Value) -> Val {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => Val::Text(s),
            // Arrays and nested objects are kept as JSON text.
            other => Val::Text(other.to_string()),
        }
    }
}

struct Column {
    name: String,
    values: Vec<Val>,
}

/// Convert JSON objects to one record batch. Every record must be an object
/// (callers reject the others with a reason before calling).
pub fn to_batch(records: Vec<Map<String, Value>>) -> Result<RecordBatch> {
    let rows = records.len();
    let mut columns: Vec<Column> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut put = |name: &str, v: Val, row: usize, columns: &mut Vec<Column>| {
        let i = match index.get(name) {
            Some(&i) => i,
            None => {
                columns.push(Column {
                    name: name.to_string(),
                    values: Vec::with_capacity(rows),
                });
                index.insert(name.to_string(), columns.len() - 1);
                columns.len() - 1
            }
        };
        let col = &mut columns[i];
        while col.values.len() < row {
            col.values.push(Val::Null);
        }
        if col.values.len() == row {
            col.values.push(v);
        } else {
            // The same flattened name twice in one record: the later one wins.
            col.values[row] = v;
        }
    };
    let mut name = String::new();
    for (row, record) in records.into_iter().enumerate() {
        for (key, value) in record {
            match value {
                Value::Object(inner) => {
                    for (k2, v2) in inner {
                        name.clear();
                        name.push_str(&key);
                        name.push_str("__");
                        name.push_str(&k2);
                        put(&name, Val::from_value(v2), row, &mut columns);
                    }
                }
                v => put(&key, Val::from_value(v), row, &mut columns),
            }
        }
    }
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut taken: std::collections::HashSet<String> =
        columns.iter().map(|c| c.name.clone()).collect();
    for mut col in columns {
        col.values.resize(rows, Val::Null);
        let primary = col.values.iter().find_map(Val::kind);
        let Some(primary) = primary else {
            fields.push(Field::new(&col.name, DataType::Null, true));
            arrays.push(Arc::new(NullArray::new(rows)));
            continue;
        };
        let numeric = matches!(primary, Kind::Int | Kind::Float);
        let has_float = numeric && col.values.iter().any(|v| matches!(v, Val::Float(_)));
        let column_kind = if has_float { Kind::Float } else { primary };
        let belongs = |k: Kind| k == column_kind || (column_kind == Kind::Float && k == Kind::Int);
        // Values of other kinds, by kind, in first-seen order.
        let mut variants: Vec<Kind> = Vec::new();
        for v in &col.values {
            if let Some(k) = v.kind()
                && !belongs(k)
                && !variants.contains(&k)
            {
                variants.push(k);
            }
        }
        let (f, a) = build(&col.name, column_kind, &col.values, belongs);
        fields.push(f);
        arrays.push(a);
        for k in variants {
            let mut name = format!("{}__{}", col.name, k.slug());
            while taken.contains(&name) {
                name.push('_');
            }
            taken.insert(name.clone());
            let (f, a) = build(&name, k, &col.values, |x| x == k);
            fields.push(f);
            arrays.push(a);
        }
    }
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    Ok(batch)
}

/// Build one column of `kind` from the values whose kind passes `keep`.
fn build(name: &str, kind: Kind, values: &[Val], keep: impl Fn(Kind) -> bool) -> (Field, ArrayRef) {
    let take = |v: &Val| v.kind().is_some_and(&keep);
    let array: ArrayRef = match kind {
        Kind::Bool => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for v in values {
                match v {
                    Val::Bool(x) if take(v) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Int => {
            let mut b = Int64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Val::Int(x) if take(v) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Float => {
            let mut b = Float64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Val::Float(x) if take(v) => b.append_value(*x),
                    Val::Int(x) if take(v) => b.append_value(*x as f64),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Text => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 16);
            for v in values {
                match v {
                    Val::Text(x) if take(v) => b.append_value(x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
    };
    let dt = array.data_type().clone();
    (Field::new(name, dt, true), array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    use proptest::prelude::*;
    use serde_json::json;

    fn objs(values: Vec<Value>) -> Vec<Map<String, Value>> {
        values
            .into_iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn flattens_one_level_and_keeps_deeper_as_json_text() {
        let b = to_batch(objs(vec![json!({
            "id": 1,
            "company": {"name": "Acme", "address": {"city": "Paris"}},
            "tags": ["a", "b"]
        })]))
        .unwrap();
        let s = b.schema();
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        // serde_json keeps object keys sorted, so columns come alphabetically.
        assert_eq!(names, ["company__address", "company__name", "id", "tags"]);
        let addr = b.column(0).as_string::<i32>().value(0);
        assert_eq!(addr, r#"{"city":"Paris"}"#);
        assert_eq!(b.column(3).as_string::<i32>().value(0), r#"["a","b"]"#);
    }

    #[test]
    fn ints_and_floats_make_a_double_and_missing_keys_are_null() {
        let b = to_batch(objs(vec![
            json!({"x": 1}),
            json!({"y": true}),
            json!({"x": 2.5}),
        ]))
        .unwrap();
        let x = b.column(0).as_primitive::<Float64Type>();
        assert_eq!(x.value(0), 1.0);
        assert!(x.is_null(1));
        assert_eq!(x.value(2), 2.5);
        assert!(b.column(1).is_null(0) && !b.column(1).is_null(1));
    }

    #[test]
    fn mixed_kinds_split_into_a_variant_column() {
        let b = to_batch(objs(vec![
            json!({"employees": 10}),
            json!({"employees": "10-50"}),
            json!({"employees": null}),
        ]))
        .unwrap();
        assert_eq!(b.schema().field(0).name(), "employees");
        assert_eq!(b.schema().field(1).name(), "employees__text");
        assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 10);
        assert!(b.column(0).is_null(1));
        assert_eq!(b.column(1).as_string::<i32>().value(1), "10-50");
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            "[a-z]{0,5}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Every non-null scalar of every record is found again in exactly
        /// one column of its row, whatever the mix of shapes and kinds.
        #[test]
        fn no_value_is_lost(records in prop::collection::vec(
            prop::collection::btree_map("[a-d]", value(), 0..4), 1..20)) {
            let maps: Vec<Map<String, Value>> =
                records.iter().map(|m| m.clone().into_iter().collect()).collect();
            let batch = to_batch(maps.clone()).unwrap();
            prop_assert_eq!(batch.num_rows(), maps.len());
            for (row, rec) in maps.iter().enumerate() {
                let mut expected = 0;
                for (k, v) in rec {
                    match v {
                        Value::Object(inner) => expected += inner.values().filter(|x| !x.is_null()).count(),
                        Value::Null => {}
                        _ => expected += 1,
                    }
                    let _ = k;
                }
                let present = batch
                    .columns()
                    .iter()
                    .filter(|c| c.data_type() != &DataType::Null && !c.is_null(row))
                    .count();
                prop_assert_eq!(present, expected);
            }
        }
    }
}
