//! Scalar functions ferry adds to every session.
//!
//! `ferry_bucket(text, n)`: which of `n` buckets a text falls in (0 to
//! n - 1; NULL for NULL), by its xxHash64. The sync's diff runs in key
//! buckets one after another when one pass would not fit the engine's
//! memory limit (`sync::diff`); a hash spreads emails and domains evenly
//! where any character of them would not (most end in `m`). With `n` =
//! i64::MAX it is a 63-bit hash of the text: the diff counts repeated keys
//! by it before counting them exactly. The value is stable across
//! processes and versions of ferry, but nothing stores it.

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

/// Register ferry's functions in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(Bucket::new()));
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
}
