//! Scalar functions ferry adds to every session.
//!
//! `ferry_bucket(text, n)`: which of `n` buckets a text falls in (0 to
//! n - 1; NULL for NULL), by its xxHash64. The sync's diff runs in key
//! buckets one after another when one pass would not fit the engine's
//! memory limit (`sync::diff`); a hash spreads emails and domains evenly
//! where any character of them would not (most end in `m`). The value is
//! stable across processes and versions of ferry, but nothing stores it.
//!
//! `ferry_values_md5(v, ...)`: the hash a sync's snapshot keeps of the
//! values it sent: the md5 (lowercase hex) of each value's text as
//! `<characters>:<text>`, `~` for NULL, joined by commas. The same as
//! `md5(concat_ws(',', case when v is null then '~' else
//! concat(cast(character_length(cast(v as varchar)) as varchar), ':',
//! cast(v as varchar)) end, ...))`, which snapshots were hashed with before
//! it, written straight into the digest instead of through five string
//! columns per value.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;

/// The bucket of one text among `n`.
pub fn bucket_of(text: &str, n: u64) -> i64 {
    (twox_hash::XxHash64::oneshot(0, text.as_bytes()) % n.max(1)) as i64
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bucket {
    signature: Signature,
}

impl Bucket {
    fn new() -> Self {
        let exact = |t: DataType| TypeSignature::Exact(vec![t, DataType::Int64]);
        Bucket {
            signature: Signature::one_of(
                vec![
                    exact(DataType::Utf8),
                    exact(DataType::Utf8View),
                    exact(DataType::LargeUtf8),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

fn buckets<'a>(texts: impl Iterator<Item = Option<&'a str>>, n: u64) -> ArrayRef {
    Arc::new(
        texts
            .map(|t| t.map(|t| bucket_of(t, n)))
            .collect::<Int64Array>(),
    )
}

impl ScalarUDFImpl for Bucket {
    fn name(&self) -> &str {
        "ferry_bucket"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, n] = args.args.as_slice() else {
            return exec_err!("ferry_bucket takes a text and a bucket count");
        };
        let n = match n {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) if *n > 0 => *n as u64,
            _ => return exec_err!("ferry_bucket: the bucket count must be a positive constant"),
        };
        let scalar = matches!(text, ColumnarValue::Scalar(_));
        let texts = text.to_array(if scalar { 1 } else { args.number_rows })?;
        let out = match texts.data_type() {
            DataType::Utf8 => buckets(texts.as_string::<i32>().iter(), n),
            DataType::LargeUtf8 => buckets(texts.as_string::<i64>().iter(), n),
            DataType::Utf8View => buckets(texts.as_string_view().iter(), n),
            t => return exec_err!("ferry_bucket: text expected, got {t}"),
        };
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ValuesMd5 {
    signature: Signature,
}

impl ScalarUDFImpl for ValuesMd5 {
    fn name(&self) -> &str {
        "ferry_values_md5"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use md5::Digest;
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let n = args.number_rows;
        // Each value's text as SQL's `cast(v as varchar)` writes it.
        let texts = args
            .args
            .iter()
            .map(|a| {
                let a = a.to_array(n)?;
                Ok(arrow::compute::cast_with_options(
                    &a,
                    &DataType::Utf8,
                    &datafusion::common::format::DEFAULT_CAST_OPTIONS,
                )?)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let texts: Vec<_> = texts.iter().map(|t| t.as_string::<i32>()).collect();
        let mut out = arrow::array::StringBuilder::with_capacity(n, n * 32);
        let mut line: Vec<u8> = Vec::with_capacity(256);
        let mut hex = [0u8; 32];
        for r in 0..n {
            line.clear();
            for (i, t) in texts.iter().enumerate() {
                if i > 0 {
                    line.push(b',');
                }
                if t.is_null(r) {
                    line.push(b'~');
                } else {
                    let v = t.value(r);
                    // The length in characters, in decimal.
                    let (mut n, start) = (v.chars().count(), line.len());
                    loop {
                        line.push(b'0' + (n % 10) as u8);
                        n /= 10;
                        if n == 0 {
                            break;
                        }
                    }
                    line[start..].reverse();
                    line.push(b':');
                    line.extend_from_slice(v.as_bytes());
                }
            }
            let digest = md5::Md5::digest(&line);
            for (i, b) in digest.iter().enumerate() {
                hex[2 * i] = DIGITS[(b >> 4) as usize];
                hex[2 * i + 1] = DIGITS[(b & 15) as usize];
            }
            out.append_value(std::str::from_utf8(&hex).unwrap_or_default());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Register ferry's functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    // Grouped first_value/last_value with ORDER BY in linear time.
    ctx.register_udaf(super::first_last::FirstLast::first_value());
    ctx.register_udaf(super::first_last::FirstLast::last_value());
    ctx.register_udf(ScalarUDF::new_from_impl(Bucket::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ValuesMd5 {
        signature: Signature::variadic_any(Volatility::Immutable),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buckets_are_stable_spread_and_null_for_null() {
        let ctx = SessionContext::new();
        register(&ctx);
        let b = ctx
            .sql(
                "select ferry_bucket(concat('person', cast(value as varchar), '@example.com'), 4) as b, \
                 count(*) as n from generate_series(1, 40000) group by b order by b",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let counts: Vec<i64> = b
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert!(
            counts.iter().all(|n| (9_000..11_000).contains(n)),
            "{counts:?}"
        );
        // Pinned: xxHash64 with seed 0 (its reference value for the empty
        // input), so a bucket is the same in every process and version.
        assert_eq!(
            bucket_of("", 1000),
            (0xEF46_DB37_51D8_E999u64 % 1000) as i64
        );
        let one = ctx
            .sql("select ferry_bucket('a@x.io', 1000) as a, ferry_bucket(cast(null as varchar), 4) as b")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let a = one[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(a.value(0), bucket_of("a@x.io", 1000));
        assert!(one[0].column(1).is_null(0));
    }

    /// Snapshots hold the hash of the values last sent, written by the SQL
    /// expression before `ferry_values_md5` existed: if the two ever
    /// disagreed, every row of every sync would look changed and be sent
    /// again. Texts (multi-byte, empty, with commas, colons and tildes),
    /// integers, floats, dates, timestamps with a zone, booleans, and NULLs.
    #[test]
    fn values_md5_is_the_hash_snapshots_were_written_with() {
        use proptest::prelude::*;
        let sql_hash = |cols: &[&str]| {
            let parts: Vec<String> = cols
                .iter()
                .map(|c| format!("case when {c} is null then '~' else concat(cast(character_length(cast({c} as varchar)) as varchar), ':', cast({c} as varchar)) end"))
                .collect();
            format!("md5(concat_ws(',', {}))", parts.join(", "))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let text = prop_oneof![
            Just(None),
            Just(Some(String::new())),
            "[a-zé,:~ 日]{0,6}".prop_map(Some),
        ];
        proptest!(ProptestConfig::with_cases(48), |(rows in prop::collection::vec((text, prop::option::of(any::<i64>()), prop::option::of(-1e12f64..1e12), prop::option::of(-100_000i32..100_000), prop::option::of(any::<bool>())), 1..20))| {
            rt.block_on(async {
                use arrow::array::{BooleanArray, Date32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
                use arrow::datatypes::{Field, Schema, TimeUnit};
                let schema = Arc::new(Schema::new(vec![
                    Field::new("t", DataType::Utf8, true),
                    Field::new("i", DataType::Int64, true),
                    Field::new("f", DataType::Float64, true),
                    Field::new("d", DataType::Date32, true),
                    Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())), true),
                    Field::new("b", DataType::Boolean, true),
                ]));
                let batch = RecordBatch::try_new(schema.clone(), vec![
                    Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                    Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                    Arc::new(Date32Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
                    Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.1.map(|i| i / 1_000_000)).collect::<Vec<_>>()).with_timezone("+02:00")),
                    Arc::new(BooleanArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
                ]).unwrap();
                let ctx = SessionContext::new();
                register(&ctx);
                ctx.register_batch("v", batch).unwrap();
                let cols = ["t", "i", "f", "d", "ts", "b"];
                for pick in [&cols[..1], &cols[..], &cols[1..3], &cols[4..]] {
                    let sql = format!(
                        "select {} as a, ferry_values_md5({}) as b from v",
                        sql_hash(pick),
                        pick.join(", ")
                    );
                    let out = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                    for b in &out {
                        let a = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                        let h = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
                        let (a, h) = (a.as_string::<i32>(), h.as_string::<i32>());
                        for r in 0..b.num_rows() {
                            prop_assert_eq!(a.value(r), h.value(r), "{:?}", pick);
                        }
                    }
                }
                Ok(())
            })?;
        });
    }
}
