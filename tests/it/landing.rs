//! Landing through the library API: round trips, other readers, failures,
//! schema evolution and freeze, and local vs memory lakes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use async_trait::async_trait;
use ferry::Error;
use ferry::lake::{Lake, Lander, RunId, StreamRef};
use ferry::project::{SchemaMode, StreamOptions};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use serde_json::json;

fn evolve() -> StreamOptions {
    StreamOptions::default()
}

fn freeze() -> StreamOptions {
    StreamOptions {
        schema: SchemaMode::Freeze,
    }
}

async fn query(lake: &Lake, sql: &str) -> Vec<RecordBatch> {
    let ctx = ferry::engine::session(lake).await.unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn count(lake: &Lake, table: &str) -> i64 {
    let b = query(lake, &format!("select count(*) as n from {table}")).await;
    b[0].column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

fn contacts_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("is_customer", DataType::Boolean, true),
        Field::new("signed_up", DataType::Date32, true),
        Field::new(
            "updated_at",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3])),
        Arc::new(StringArray::from(vec![
            Some("a@x.io"),
            None,
            Some("ç@ü.de"),
        ])),
        Arc::new(Float64Array::from(vec![Some(0.5), Some(-1e9), None])),
        Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        Arc::new(Date32Array::from(vec![Some(20_000), None, Some(19_000)])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000), None, Some(0)])
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

#[tokio::test]
async fn landing_round_trip_keeps_values_and_types() {
    let lake = Lake::memory();
    let stream = StreamRef::parse("crm.contacts").unwrap();
    let input = contacts_batch();
    let lander = Lander::new(lake.clone(), RunId::new());
    let report = lander
        .land_batches(&stream, evolve(), vec![input.clone()])
        .await
        .unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(report.schema_version, 1);

    let out = query(
        &lake,
        "select id, email, score, is_customer, signed_up, updated_at, _ferry_run_id, _ferry_loaded_at \
         from crm.contacts order by id",
    )
    .await;
    let out = arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
    for (i, field) in input.schema().fields().iter().enumerate() {
        assert_eq!(
            out.schema().field(i).data_type(),
            field.data_type(),
            "{}",
            field.name()
        );
        assert_eq!(
            out.column(i).as_ref(),
            input.column(i).as_ref(),
            "{}",
            field.name()
        );
    }
    let run = out.column(6).as_string::<i32>();
    assert!((0..3).all(|i| run.value(i) == lander.run_id().as_str()));
    assert_eq!(out.column(7).null_count(), 0);
}

#[tokio::test]
async fn landed_files_are_plain_parquet_for_other_readers() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::from_url("lake", dir.path(), &BTreeMap::new()).unwrap();
    let stream = StreamRef::parse("crm.contacts").unwrap();
    let lander = Lander::new(lake, RunId::new());
    lander
        .land_batches(&stream, evolve(), vec![contacts_batch(), contacts_batch()])
        .await
        .unwrap();
    let raw = dir.path().join("lake/raw/crm/contacts");
    let day = std::fs::read_dir(&raw).unwrap().next().unwrap().unwrap();
    assert!(day.file_name().to_string_lossy().starts_with("dt="));
    let files: Vec<_> = std::fs::read_dir(day.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "both batches share one file: {files:?}");
    // The parquet crate's own row reader, not ferry's (or DataFusion's) path.
    let reader = SerializedFileReader::new(std::fs::File::open(&files[0]).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 6);
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert!(names.contains(&"_ferry_loaded_at".to_string()), "{names:?}");
    let rows: Vec<_> = reader
        .get_row_iter(None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows[0].to_string().contains("a@x.io"));
}

/// A store that fails every write under `raw/` once switched on, as a crash
/// or outage mid-landing would.
#[derive(Debug)]
pub struct FailingWrites {
    pub inner: Arc<dyn ObjectStore>,
    pub fail: AtomicBool,
    /// Writes under `prefix` allowed before failing (when `fail` is set).
    pub allowed: std::sync::atomic::AtomicUsize,
    pub prefix: &'static str,
}

impl fmt::Display for FailingWrites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingWrites({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingWrites {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail.load(Ordering::SeqCst)
            && location.as_ref().starts_with(self.prefix)
            && self
                .allowed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "connection reset mid-upload".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_failed_write_leaves_nothing_visible_and_logs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let local = Lake::from_url("lake", dir.path(), &BTreeMap::new()).unwrap();
    let store = Arc::new(FailingWrites {
        inner: local.store().clone(),
        fail: AtomicBool::new(false),
        allowed: std::sync::atomic::AtomicUsize::new(0),
        prefix: "raw/",
    });
    let lake = Lake::from_store(store.clone(), "failing");
    let stream = StreamRef::parse("crm.contacts").unwrap();
    Lander::new(lake.clone(), RunId::new())
        .land_batches(&stream, evolve(), vec![contacts_batch()])
        .await
        .unwrap();

    store.fail.store(true, Ordering::SeqCst);
    let err = Lander::new(lake.clone(), RunId::new())
        .land_batches(&stream, evolve(), vec![contacts_batch()])
        .await
        .unwrap_err();
    assert!(err.retryable(), "storage failures are worth a retry: {err}");
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(count(&lake, "crm.contacts").await, 3);
    assert_eq!(count(&lake, "ferry.ingestions").await, 1);

    // A failure after some files were written: those are logged, the rest
    // never appear.
    store.allowed.store(1, Ordering::SeqCst);
    let mut lander = Lander::new(lake.clone(), RunId::new());
    lander.target_file_bytes = 1; // one file per batch
    let err = lander
        .land_batches(
            &stream,
            evolve(),
            vec![contacts_batch(), contacts_batch(), contacts_batch()],
        )
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err}");
    assert_eq!(count(&lake, "crm.contacts").await, 6);
    assert_eq!(count(&lake, "ferry.ingestions").await, 2);

    // The local store stages writes beside the target; a staging file left by
    // a killed process is never read as data.
    let day = std::fs::read_dir(dir.path().join("lake/raw/crm/contacts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(
        day.join("20990101T000000Z-deadbeef-00001.parquet#1"),
        b"PAR1 half a file",
    )
    .unwrap();
    assert_eq!(count(&lake, "crm.contacts").await, 6);
}

#[tokio::test]
async fn new_columns_are_added_and_older_rows_read_null() {
    let lake = Lake::memory();
    let stream = StreamRef::parse("crm.contacts").unwrap();
    let l = Lander::new(lake.clone(), RunId::new());
    l.land_json(&stream, evolve(), [Ok(json!({"id": 1, "email": "a@x.io"}))])
        .await
        .unwrap();
    let r = l
        .land_json(
            &stream,
            evolve(),
            [Ok(json!({"id": 2, "email": "b@x.io", "phone": "+1 555"}))],
        )
        .await
        .unwrap();
    assert_eq!(r.schema_version, 2);
    let out = query(&lake, "select id, phone from crm.contacts order by id").await;
    let phone = out[0].column(1).as_string::<i32>();
    assert!(phone.is_null(0));
    assert_eq!(phone.value(1), "+1 555");
}

#[tokio::test]
async fn changed_type_lands_in_a_variant_column_with_a_recorded_warning() {
    let lake = Lake::memory();
    let stream = StreamRef::parse("crm.companies").unwrap();
    let l = Lander::new(lake.clone(), RunId::new());
    l.land_json(&stream, evolve(), [Ok(json!({"id": 1, "employees": 420}))])
        .await
        .unwrap();
    let r = l
        .land_json(
            &stream,
            evolve(),
            [Ok(json!({"id": 2, "employees": "51-200"}))],
        )
        .await
        .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("employees__text"),
        "{:?}",
        r.warnings
    );

    let out = query(
        &lake,
        "select id, employees, employees__text from crm.companies order by id",
    )
    .await;
    let b = &out[0];
    assert_eq!(
        b.column(1).data_type(),
        &DataType::Int64,
        "the column keeps its type"
    );
    assert_eq!(
        b.column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        420
    );
    assert!(b.column(1).is_null(1));
    assert_eq!(b.column(2).as_string::<i32>().value(1), "51-200");

    let log = query(
        &lake,
        "select warnings from ferry.ingestions where warnings is not null",
    )
    .await;
    assert_eq!(log.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert!(
        log[0]
            .column(0)
            .as_string::<i32>()
            .value(0)
            .contains("employees")
    );
}

#[tokio::test]
async fn frozen_schema_quarantines_a_changing_batch_and_loses_nothing() {
    let lake = Lake::memory();
    let stream = StreamRef::parse("forms.signups").unwrap();
    let l = Lander::new(lake.clone(), RunId::new());
    l.land_json(
        &stream,
        freeze(),
        [Ok(json!({"email": "a@x.io", "plan": "pro"}))],
    )
    .await
    .unwrap();
    let err = l
        .land_json(
            &stream,
            freeze(),
            [
                Ok(json!({"email": "b@x.io", "plan": "free", "utm_source": "ads"})),
                Ok(json!({"email": "c@x.io", "plan": "pro"})),
            ],
        )
        .await
        .unwrap_err();
    match &err {
        Error::SchemaFrozen { rows, changes, .. } => {
            assert_eq!(*rows, 2);
            assert!(changes.contains("utm_source"), "{changes}");
        }
        other => panic!("expected SchemaFrozen, got {other}"),
    }
    assert!(err.to_string().contains("ferry.quarantine"), "{err}");
    assert_eq!(count(&lake, "forms.signups").await, 1);

    let q = query(
        &lake,
        "select reason, record from ferry.quarantine where source = 'forms' order by record",
    )
    .await;
    let b = &q[0];
    assert_eq!(b.num_rows(), 2);
    assert!(b.column(0).as_string::<i32>().value(0).contains("frozen"));
    assert!(
        b.column(1)
            .as_string::<i32>()
            .value(0)
            .contains("\"utm_source\":\"ads\"")
    );
    let log = query(
        &lake,
        "select status, rejected_rows, error from ferry.ingestions where status = 'quarantined'",
    )
    .await;
    assert_eq!(
        log[0]
            .column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        2
    );
}

#[tokio::test]
async fn records_that_are_not_objects_are_quarantined_with_a_reason() {
    let lake = Lake::memory();
    let stream = StreamRef::parse("web.events").unwrap();
    let r = Lander::new(lake.clone(), RunId::new())
        .land_json(
            &stream,
            evolve(),
            [Ok(json!({"e": "view"})), Ok(json!([1, 2])), Ok(json!(7))],
        )
        .await
        .unwrap();
    assert_eq!((r.rows, r.rejected), (1, 2));
    let q = query(
        &lake,
        "select origin, reason from ferry.quarantine order by origin",
    )
    .await;
    assert_eq!(q[0].column(0).as_string::<i32>().value(0), "record 2");
    assert!(
        q[0].column(1)
            .as_string::<i32>()
            .value(0)
            .contains("an array")
    );
    let log = query(&lake, "select sum(rejected_rows) from ferry.ingestions").await;
    assert_eq!(
        log[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        2
    );
}

/// Land the same mixed workload and return what a user would query.
async fn scenario(lake: &Lake) -> Vec<String> {
    let stream = StreamRef::parse("crm.contacts").unwrap();
    let l = Lander::new(lake.clone(), RunId::new());
    l.land_json(
        &stream,
        evolve(),
        (0..25_000).map(|i| Ok(json!({"id": i, "n": i % 7}))),
    )
    .await
    .unwrap();
    l.land_json(&stream, evolve(), [Ok(json!({"id": "x-1", "extra": true}))])
        .await
        .unwrap();
    let mut out = Vec::new();
    for sql in [
        "select count(*), sum(n), count(extra), count(id__text) from crm.contacts",
        "select source, stream, status, rows, schema_version from ferry.ingestions order by schema_version, rows",
        "select table_schema, table_name from information_schema.tables where table_schema in ('crm', 'ferry') order by 1, 2",
    ] {
        let b = query(lake, sql).await;
        out.push(
            arrow::util::pretty::pretty_format_batches(&b)
                .unwrap()
                .to_string(),
        );
    }
    out
}

#[tokio::test]
async fn memory_and_local_lakes_behave_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let local = Lake::from_url("lake", dir.path(), &BTreeMap::new()).unwrap();
    let memory = Lake::from_url("memory://", dir.path(), &BTreeMap::new()).unwrap();
    let a = scenario(&local).await;
    let b = scenario(&memory).await;
    assert_eq!(a, b);
    assert!(a[0].contains("25001"), "{}", a[0]);
}

/// The library's landing on S3, with 503s and replies lost after the PUT
/// was applied: the same tables as on a folder, nothing landed twice.
#[tokio::test]
async fn an_s3_lake_behaves_like_a_folder_through_slowdowns_and_lost_replies() {
    let Some(s3) = crate::s3::S3::start(&["--slowdown-every", "7", "--drop-every", "3"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = Lake::from_url("lake", dir.path(), &BTreeMap::new()).unwrap();
    assert_eq!(scenario(&s3.lake("landing")).await, scenario(&local).await);
}
