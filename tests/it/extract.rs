//! Extraction end to end over real HTTP: the declarative REST source against
//! the generic REST emulator (every pagination style and auth scheme,
//! incremental cursors, parent → child, rate limits, a crash mid-run).

use std::path::{Path, PathBuf};

use ferry::lake::Lake;
use ferry::project::Project;
use ferry::sim::rest::{self, RestAuth, RestConfig, RunningRest};

pub async fn api(config: RestConfig) -> RunningRest {
    rest::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub fn project(dir: &Path, sources: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!("[project]\nname = \"ex\"\n\n{sources}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        "API_TOKEN = \"tok-123\"\nAPI_SECRET = \"sec-456\"\n",
    )
    .unwrap();
    dir.to_path_buf()
}

pub async fn extract(
    dir: &Path,
    selection: &[&str],
) -> ferry::Result<Vec<ferry::extract::StreamSummary>> {
    let project = Project::load(dir)?;
    let lake = Lake::open(&project.lake, &project.dir)?;
    let sel: Vec<String> = selection.iter().map(|s| s.to_string()).collect();
    ferry::extract::extract(&project, &lake, &sel, |_| {}).await
}

pub async fn scalar(dir: &Path, sql: &str) -> String {
    let project = Project::load(dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let ctx = ferry::engine::session(&lake).await.unwrap();
    let b = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let col = arrow::compute::cast(b[0].column(0), &arrow::datatypes::DataType::Utf8).unwrap();
    arrow::array::AsArray::as_string::<i32>(&col)
        .value(0)
        .to_string()
}

const STYLES: &str = r#"
[sources.api]
type = "rest"
url = "URL"
auth = { type = "bearer", token = "${API_TOKEN}" }

[sources.api.streams.by_cursor]
path = "/cursor/items"
records = "data"
primary_key = "id"
pagination = { type = "cursor", cursor_path = "meta.next_cursor", param = "cursor", limit_param = "limit", limit = 40 }

[sources.api.streams.by_next_url]
path = "/next_url/items"
records = "results"
pagination = { type = "next_url", path = "next" }

[sources.api.streams.by_link]
path = "/link/items"
pagination = { type = "link_header" }

[sources.api.streams.by_offset]
path = "/offset/items"
records = "items"
pagination = { type = "offset", limit = 50 }

[sources.api.streams.by_page]
path = "/page/items"
records = "records"
pagination = { type = "page", size_param = "per_page", size = 60, total_pages_path = "total_pages" }

[sources.api.streams.sequences]
path = "/sequences"
records = "data"

[sources.api.streams.steps]
path = "/sequences/{id}/steps"
records = "data"
parent = { stream = "sequences", key = "id" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pagination_style_fetches_every_record_once() {
    let s = api(RestConfig {
        records: 257,
        auth: RestAuth::Bearer("tok-123".into()),
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &STYLES.replace("URL", &s.base_url()));
    let summaries = extract(&dir, &[]).await.unwrap();
    let rows: Vec<(String, u64, u64)> = summaries
        .iter()
        .map(|x| (x.stream.clone(), x.rows, x.pages))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("api.by_cursor".to_string(), 257, 7),
            ("api.by_link".into(), 257, 9),
            ("api.by_next_url".into(), 257, 13),
            // Six pages and the empty one that ends it (a short page does
            // not: APIs cap `limit` below what was asked).
            ("api.by_offset".into(), 257, 7),
            ("api.by_page".into(), 257, 5),
            ("api.sequences".into(), 4, 1),
            ("api.steps".into(), 12, 4),
        ]
    );
    for t in [
        "by_cursor",
        "by_next_url",
        "by_link",
        "by_offset",
        "by_page",
    ] {
        let n = scalar(
            &dir,
            &format!("select count(distinct id) || '/' || count(*) || '/' || max(id) from api.{t}"),
        )
        .await;
        assert_eq!(n, "257/257/257", "{t}");
    }
    // Nested objects flatten one level; arrays stay JSON text.
    let v = scalar(
        &dir,
        "select account__domain || ' ' || tags from api.by_cursor where id = 3",
    )
    .await;
    assert_eq!(v, "co3.example [\"gtm\",\"odd\"]");
    let v = scalar(&dir, "select count(*) from api.steps where sequence_id = 2").await;
    assert_eq!(v, "3");
    assert!(s.stats().0 > 40);
}

/// A vendor whose JSON carries lone surrogates (JavaScript's
/// `JSON.stringify` of a string cut inside a pair) in some records: those
/// records go to `ferry.quarantine` with the reason and their text, every
/// other record lands, and the stream completes: before, the page failed
/// on every retry and the stream could not get past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_lone_surrogates_are_quarantined_and_the_rest_land() {
    let s = api(RestConfig {
        records: 257,
        auth: RestAuth::Bearer("tok-123".into()),
        lone_surrogate_every: 50,
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(tmp.path(), &STYLES.replace("URL", &s.base_url()));
    let styles = [
        "by_cursor",
        "by_next_url",
        "by_link",
        "by_offset",
        "by_page",
    ];
    let selection: Vec<String> = styles.iter().map(|t| format!("api.{t}")).collect();
    let selection: Vec<&str> = selection.iter().map(String::as_str).collect();
    let summaries = extract(&dir, &selection).await.unwrap();
    for x in &summaries {
        assert_eq!(x.error, None, "{}", x.stream);
        // Rows counts every record read, the quarantined ones too.
        assert_eq!((x.rows, x.quarantined), (257, 5), "{}", x.stream);
    }
    for t in styles {
        let n = scalar(
            &dir,
            &format!(
                "select count(*) || '/' || count(distinct id) || '/' || sum(case when id % 50 = 0 then 1 else 0 end) from api.{t}"
            ),
        )
        .await;
        assert_eq!(n, "252/252/0", "{t}");
        let q = scalar(
            &dir,
            &format!(
                "select count(*) || '|' || min(origin) || '|' || min(reason) || '|' || min(record) \
                 from ferry.quarantine where stream = '{t}'"
            ),
        )
        .await;
        let parts: Vec<&str> = q.splitn(4, '|').collect();
        assert_eq!(parts[0], "5", "{t}: {q}");
        assert!(parts[1].starts_with("record "), "{t}: {q}");
        assert!(
            parts[2].starts_with("not valid JSON: ") && parts[2].contains("surrogate"),
            "{t}: {q}"
        );
        // The record's text as the vendor sent it, escape included.
        assert!(
            parts[3].contains(r#""name":"Person 100 \ud800""#),
            "{t}: {q}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_fetch_only_changed_records() {
    let s = api(RestConfig {
        records: 120,
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        &format!(
            r#"[sources.api]
type = "rest"
url = "{}"

[sources.api.streams.items]
path = "/cursor/items"
records = "data"
primary_key = "id"
pagination = {{ type = "cursor", cursor_path = "meta.next_cursor", param = "cursor", limit_param = "limit", limit = 50 }}
incremental = {{ cursor_field = "updated_at", param = "updated_since" }}
"#,
            s.base_url()
        ),
    );
    let first = extract(&dir, &["api.items"]).await.unwrap();
    assert_eq!(first[0].rows, 120);
    let cursor = first[0].cursor.clone().unwrap();
    assert_eq!(cursor, serde_json::json!(s.record(120)["updated_at"]));

    // Nothing changed: only the boundary record (cursor is inclusive) comes back.
    let again = extract(&dir, &["api.items"]).await.unwrap();
    assert_eq!(again[0].rows, 1);

    // Three records change.
    let later = chrono::Utc::now();
    s.touch(&[5, 60, 77], later);
    let third = extract(&dir, &["api.items"]).await.unwrap();
    assert_eq!(
        third[0].rows,
        3 + 1,
        "the changed records, plus the old boundary record"
    );
    let ids = scalar(&dir, "select string_agg(cast(id as varchar), ',' order by id) from (select distinct id from api.items where updated_at >= '2026-06-01')").await;
    assert_eq!(ids, "5,60,77");
    // The macro-free way to read the latest row per key.
    let n = scalar(&dir, "select count(*) from (select id, row_number() over (partition by id order by _ferry_loaded_at desc) rn from api.items) where rn = 1").await;
    assert_eq!(n, "120");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_schemes_and_rate_limits() {
    let cases: Vec<(RestAuth, &str)> = vec![
        (
            RestAuth::ApiKeyHeader("X-Api-Key".into(), "tok-123".into()),
            r#"{ type = "api_key", header = "X-Api-Key", key = "${API_TOKEN}" }"#,
        ),
        (
            RestAuth::ApiKeyQuery("api_key".into(), "tok-123".into()),
            r#"{ type = "api_key", query = "api_key", key = "${API_TOKEN}" }"#,
        ),
        (
            RestAuth::Basic("ferry".into(), "sec-456".into()),
            r#"{ type = "basic", username = "ferry", password = "${API_SECRET}" }"#,
        ),
        (
            RestAuth::OAuth2("client".into(), "sec-456".into()),
            r#"{ type = "oauth2", token_url = "URL/oauth/token", client_id = "client", client_secret = "${API_SECRET}" }"#,
        ),
    ];
    for (auth, toml) in cases {
        let s = api(RestConfig {
            records: 30,
            auth: auth.clone(),
            per_second: 3,
            ..Default::default()
        })
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "[sources.api]\ntype = \"rest\"\nurl = \"URL\"\nauth = {toml}\nrequests_per_second = 3\n\n\
             [sources.api.streams.items]\npath = \"/offset/items\"\nrecords = \"items\"\npagination = {{ type = \"offset\", limit = 5 }}\n"
        )
        .replace("URL", &s.base_url());
        let dir = project(tmp.path(), &text);
        let out = extract(&dir, &[]).await.unwrap();
        assert_eq!(out[0].rows, 30, "{auth:?}");
        assert_eq!(s.stats().1, 0, "{auth:?}: paced under 3 requests/s, no 429");
        // Wrong credentials: a clear error that does not print the secret.
        std::fs::write(
            dir.join("secrets.toml"),
            "API_TOKEN = \"nope-1\"\nAPI_SECRET = \"nope-2\"\n",
        )
        .unwrap();
        let e = extract(&dir, &[]).await.unwrap_err().to_string();
        assert!(
            e.contains("refused the credentials") || e.contains("refused"),
            "{auth:?}: {e}"
        );
        assert!(!e.contains("nope-"), "{e}");
    }
}

#[test]
fn config_mistakes_are_caught_before_any_call() {
    let parse = |t: &str| {
        Project::parse(
            Path::new("p"),
            Path::new("p/ferry.toml"),
            &format!("[project]\nname = \"x\"\n{t}"),
            &Default::default(),
            None,
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = parse(
        "[sources.a]\ntype = \"rest\"\nurl = \"http://x\"\n[sources.a.streams.kids]\npath = \"/k\"\nparent = { stream = \"mom\" }\n",
    );
    assert!(e.contains("parent stream \"mom\" is not defined"), "{e}");
    let e = parse(
        "[sources.a]\ntype = \"rest\"\nurl = \"http://x\"\n[sources.a.streams.kids]\npath = \"/k\"\npagination = { type = \"cursr\" }\n",
    );
    assert!(e.contains("cursr") && e.contains("ferry.toml:"), "{e}");
    let e = parse("[sources.a]\ntype = \"rest\"\n[sources.a.streams.t]\npath = \"/t\"\n");
    assert!(e.contains("needs url"), "{e}");
    let e = parse(
        "[sources.a]\ntype = \"rest\"\nurl = \"http://x\"\nauth = { type = \"api_key\", key = \"k\", header = \"X\", query = \"k\" }\n[sources.a.streams.t]\npath = \"/t\"\n",
    );
    assert!(e.contains("exactly one of header"), "{e}");
}

/// An unset secret does not stop commands that never call the vendor; the
/// extraction that needs it fails before any call, naming the file, line
/// and variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_secret_fails_only_the_calls_that_need_it() {
    let project = Project::parse(
        Path::new("p"),
        Path::new("p/ferry.toml"),
        "[project]\nname = \"x\"\n[sources.enrich]\ntype = \"rest\"\nurl = \"http://127.0.0.1:9\"\n\
         auth = { type = \"api_key\", header = \"X-Api-Key\", key = \"${FERRY_TEST_UNSET_KEY}\" }\n\
         [sources.enrich.streams.people]\npath = \"/people\"\n",
        &Default::default(),
        None,
    )
    .expect("a project with an unset secret still loads");
    let lake = Lake::memory();
    let e = ferry::extract::extract(&project, &lake, &[], |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FERRY_TEST_UNSET_KEY") && e.contains("ferry.toml:6"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_drops_check_headers_quarantine_bad_rows_and_land_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        r#"[sources.events]
type = "files"
path = "drops"

[sources.events.streams.attendees]
pattern = "attendees*.csv"
columns = ["Email", "Company Name", "Registered At"]

[sources.events.streams.leads]
pattern = "*.jsonl"

[sources.events.streams.partners]
pattern = "*.parquet"
"#,
    );
    let drops = dir.join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    std::fs::write(
        drops.join("attendees-1.csv"),
        "Email,Company Name,Registered At\nann@a.io,Acme,2026-11-01\nbob@b.io,\"Beta, Inc\",2026-11-02\nbroken@c.io,Gamma\ncy@c.io,,2026-11-03\n",
    )
    .unwrap();
    std::fs::write(
        drops.join("attendees-2.csv"),
        "Email,Company,Registered At\ndee@d.io,Delta,2026-11-04\n",
    )
    .unwrap();
    std::fs::write(
        drops.join("leads.jsonl"),
        "{\"email\": \"x@y.io\", \"score\": 3}\nnot json\n{\"email\": \"z@y.io\"}\n",
    )
    .unwrap();
    {
        use std::sync::Arc;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("partner", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("deals", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::StringArray::from(vec!["p1", "p2"])),
                Arc::new(arrow::array::Int64Array::from(vec![4, 7])),
            ],
        )
        .unwrap();
        let f = std::fs::File::create(drops.join("partners.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let out = extract(&dir, &[]).await.unwrap();
    let by = |s: &str| out.iter().find(|x| x.stream == s).unwrap().clone();
    let a = by("events.attendees");
    assert_eq!((a.rows, a.quarantined, a.pages), (3, 1, 1), "{a:?}");
    assert_eq!(a.rejected_files.len(), 1);
    assert!(
        a.rejected_files[0].contains("\"Company\" where \"Company Name\" is declared"),
        "{:?}",
        a.rejected_files
    );
    assert_eq!(
        (by("events.leads").rows, by("events.leads").quarantined),
        (2, 1)
    );
    assert_eq!(by("events.partners").rows, 2);

    assert_eq!(
        scalar(
            &dir,
            "select company_name from events.attendees where email = 'bob@b.io'"
        )
        .await,
        "Beta, Inc"
    );
    assert_eq!(
        scalar(
            &dir,
            "select count(*) from events.attendees where company_name is null"
        )
        .await,
        "1"
    );
    assert_eq!(
        scalar(&dir, "select sum(deals) from events.partners").await,
        "11"
    );
    let q = scalar(
        &dir,
        "select origin || ' ' || reason from ferry.quarantine where stream = 'attendees'",
    )
    .await;
    assert!(q.starts_with("attendees-1.csv:4 expected 3 fields"), "{q}");
    let q = scalar(
        &dir,
        "select origin from ferry.quarantine where stream = 'leads'",
    )
    .await;
    assert_eq!(q, "leads.jsonl:2");
    let log = scalar(
        &dir,
        "select string_agg(source_file || '=' || status || ':' || rows || '/' || rejected_rows, ' ' order by source_file, status) from ferry.ingestions where stream = 'attendees'",
    )
    .await;
    assert_eq!(
        log,
        "attendees-1.csv=landed:3/0 attendees-1.csv=quarantined:0/1 attendees-2.csv=rejected:0/0"
    );

    // Re-run: nothing lands twice; the same content under a new name is skipped too.
    std::fs::copy(
        drops.join("attendees-1.csv"),
        drops.join("attendees-1-copy.csv"),
    )
    .unwrap();
    let out = extract(&dir, &["events.attendees"]).await.unwrap();
    assert_eq!((out[0].rows, out[0].skipped_files), (0, 2), "{:?}", out[0]);
    // The fixed file lands.
    std::fs::write(
        drops.join("attendees-2.csv"),
        "Email,Company Name,Registered At\ndee@d.io,Delta,2026-11-04\n",
    )
    .unwrap();
    let out = extract(&dir, &["events.attendees"]).await.unwrap();
    assert_eq!(out[0].rows, 1);
    assert_eq!(
        scalar(&dir, "select count(*) from events.attendees").await,
        "4"
    );
}

fn hubspot_project(dir: &Path, url: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        "HUBSPOT_TOKEN = \"ferry-sim-token\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        format!(
            r#"[project]
name = "hs"

[sources.hubspot]
type = "hubspot"
url = "{url}"
token = "${{HUBSPOT_TOKEN}}"
requests_per_10s = 10000
search_per_second = 100
search_lag_margin_seconds = 1

[sources.hubspot.streams.contacts]
properties = ["email", "firstname", "country"]
associations = ["companies"]

[sources.hubspot.streams.companies]
"#
        ),
    )
    .unwrap();
    dir.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_full_then_incremental_with_associations() {
    use ferry::sim::hubspot::{self, SimConfig};
    let s = hubspot::start(
        SimConfig {
            ten_secondly: 10_000,
            search_per_second: 100,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (contacts, companies) = s
        .with_crm(|crm| {
            let co: Vec<u64> = (0..30)
                .map(|i| {
                    crm.create(
                        "companies",
                        [
                            ("domain".to_string(), format!("co{i}.io")),
                            ("name".to_string(), format!("Co {i}")),
                        ]
                        .into(),
                    )
                    .id
                })
                .collect();
            let ct: Vec<u64> = (0..250)
                .map(|i| {
                    let id = crm
                        .create(
                            "contacts",
                            [
                                ("email".to_string(), format!("p{i}@x.io")),
                                ("country".to_string(), "US".to_string()),
                            ]
                            .into(),
                        )
                        .id;
                    crm.associate("contacts", id, "companies", co[i % 30]);
                    id
                })
                .collect();
            (ct, co)
        })
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = hubspot_project(tmp.path(), &s.base_url());
    // Older than the search lag margin (1 s), so the incremental run below
    // does not read them again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = extract(&dir, &[]).await.unwrap();
    assert_eq!(
        out.iter()
            .map(|x| (x.stream.as_str(), x.rows))
            .collect::<Vec<_>>(),
        vec![("hubspot.companies", 30), ("hubspot.contacts", 250)]
    );
    assert_eq!(
        scalar(&dir, "select count(distinct id) from hubspot.contacts").await,
        "250"
    );
    assert_eq!(
        scalar(
            &dir,
            "select country from hubspot.contacts where email = 'p7@x.io'"
        )
        .await,
        "US"
    );
    // Properties became columns; all properties were discovered for companies.
    assert_eq!(
        scalar(
            &dir,
            "select name from hubspot.companies where domain = 'co3.io'"
        )
        .await,
        "Co 3"
    );
    assert_eq!(
        scalar(&dir, "select count(*) from hubspot.contacts_companies").await,
        "250"
    );
    let linked = scalar(
        &dir,
        &format!(
            "select to_id from hubspot.contacts_companies where from_id = '{}'",
            contacts[31]
        ),
    )
    .await;
    assert_eq!(linked, companies[1].to_string());

    // Incremental: only records modified since.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.with_crm(|crm| {
        for id in &contacts[10..15] {
            crm.touch("contacts", *id, chrono::Utc::now());
        }
    });
    // Changes younger than the margin are the next run's.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (calls_before, _) = s.stats();
    let out = extract(&dir, &["hubspot.contacts"]).await.unwrap();
    assert_eq!(out[0].rows, 5);
    assert!(
        s.stats().0 - calls_before <= 5,
        "a page, associations, archived records"
    );
    let out = extract(&dir, &["hubspot.contacts"]).await.unwrap();
    assert_eq!(out[0].rows, 0, "nothing changed since");
}

/// A full load reads the associations of ten list pages in one batch read
/// (HubSpot takes 1,000 ids): 2,550 contacts are 26 list pages and 3
/// association reads, not 26 + 26; every link is landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_full_load_reads_associations_a_thousand_records_per_call() {
    use ferry::sim::hubspot::{self, SimConfig};
    let s = hubspot::start(
        SimConfig {
            ten_secondly: 10_000,
            search_per_second: 100,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    s.with_crm(|crm| {
        let co = crm
            .create(
                "companies",
                [("domain".to_string(), "co.io".to_string())].into(),
            )
            .id;
        for i in 0..2550 {
            let id = crm
                .create(
                    "contacts",
                    [("email".to_string(), format!("p{i}@x.io"))].into(),
                )
                .id;
            crm.associate("contacts", id, "companies", co);
        }
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = hubspot_project(tmp.path(), &s.base_url());
    let (before, _) = s.stats();
    let out = extract(&dir, &["hubspot.contacts"]).await.unwrap();
    assert_eq!(out[0].rows, 2550);
    assert_eq!(
        s.stats().0 - before,
        26 + 3,
        "list pages + association reads"
    );
    assert_eq!(
        scalar(
            &dir,
            "select count(distinct from_id) from hubspot.contacts_companies"
        )
        .await,
        "2550"
    );
}

/// More than 10,000 records changed since the last run: the search window is
/// split so every one of them is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_incremental_crosses_the_10000_result_search_cap() {
    use ferry::sim::hubspot::{self, SimConfig};
    let s = hubspot::start(
        SimConfig {
            ten_secondly: 100_000,
            search_per_second: 1000,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ids: Vec<u64> = s
        .with_crm(|crm| {
            (0..12_500)
                .map(|i| {
                    crm.create(
                        "contacts",
                        [("email".to_string(), format!("p{i}@x.io"))].into(),
                    )
                    .id
                })
                .collect()
        })
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = hubspot_project(tmp.path(), &s.base_url());
    let out = extract(&dir, &["hubspot.contacts"]).await.unwrap();
    assert_eq!(out[0].rows, 12_500);
    // Every record changes, 2,500 of them in the very same millisecond.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let base = chrono::Utc::now();
    s.with_crm(|crm| {
        for (i, id) in ids.iter().enumerate() {
            let at = if i < 2_500 {
                base
            } else {
                base + chrono::Duration::milliseconds(1 + (i as i64 % 3000))
            };
            crm.touch("contacts", *id, at);
        }
    });
    // Past the last change plus the search lag margin (1 s).
    tokio::time::sleep(std::time::Duration::from_millis(4200)).await;
    let out = extract(&dir, &["hubspot.contacts"]).await.unwrap();
    // Keyset paging re-reads records at page boundaries (at least once).
    assert!(out[0].rows >= 12_500, "{:?}", out[0]);
    let n = scalar(&dir, "select count(distinct id) from hubspot.contacts where lastmodifieddate >= '2026-01-01' and _ferry_run_id = (select max(_ferry_run_id) from hubspot.contacts)").await;
    assert_eq!(n, "12500");
}

fn webhook_project(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("secrets.toml"),
        "STRIPE_SECRET = \"whsec_test\"\nTF_SECRET = \"tf_secret\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("ferry.toml"),
        r#"[project]
name = "hooks"

[sources.billing]
type = "webhook"
preset = "stripe"
secret = "${STRIPE_SECRET}"
max_body_bytes = 4096

[sources.forms]
type = "webhook"
preset = "typeform"
secret = "${TF_SECRET}"
"#,
    )
    .unwrap();
    dir.to_path_buf()
}

fn stripe_event(i: usize) -> String {
    format!(
        r#"{{"id": "evt_{i}", "type": "invoice.paid", "created": {}, "account": "acct_1", "data": {{"object": {{"customer": "cus_{}", "amount": {}}}}}}}"#,
        chrono::Utc::now().timestamp(),
        i % 40,
        i * 10
    )
}

fn stripe_headers(secret: &str, body: &str, at: i64) -> String {
    let sig = hex::encode(ferry::extract::webhook::sign(
        secret,
        format!("{at}.{body}").as_bytes(),
    ));
    format!("t={at},v1={sig}")
}

async fn post(client: &reqwest::Client, url: &str, header: (&str, String), body: String) -> u16 {
    client
        .post(url)
        .header(header.0, header.1)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_verify_signatures_and_land_each_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = webhook_project(tmp.path());
    let project = Project::load(&dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let server = ferry::serve::start(
        &project,
        lake.clone(),
        "127.0.0.1:0".parse().unwrap(),
        std::time::Duration::from_millis(200),
    )
    .await
    .unwrap();
    let url = format!("{}/webhooks/billing", server.url());
    let c = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let good = stripe_event(1);
    assert_eq!(
        post(
            &c,
            &url,
            ("stripe-signature", stripe_headers("whsec_test", &good, now)),
            good.clone()
        )
        .await,
        200
    );
    // Replayed delivery of the same event: acknowledged, not kept twice.
    assert_eq!(
        post(
            &c,
            &url,
            ("stripe-signature", stripe_headers("whsec_test", &good, now)),
            good.clone()
        )
        .await,
        200
    );
    // Wrong secret, tampered body, stale timestamp (a replay of an old capture).
    assert_eq!(
        post(
            &c,
            &url,
            ("stripe-signature", stripe_headers("wrong", &good, now)),
            good.clone()
        )
        .await,
        401
    );
    assert_eq!(
        post(
            &c,
            &url,
            ("stripe-signature", stripe_headers("whsec_test", &good, now)),
            stripe_event(2)
        )
        .await,
        401
    );
    let old = stripe_event(3);
    assert_eq!(
        post(
            &c,
            &url,
            (
                "stripe-signature",
                stripe_headers("whsec_test", &old, now - 3600)
            ),
            old
        )
        .await,
        401
    );
    // Oversized body.
    let big = format!(r#"{{"id": "evt_big", "pad": "{}"}}"#, "x".repeat(5000));
    assert_eq!(
        post(
            &c,
            &url,
            ("stripe-signature", stripe_headers("whsec_test", &big, now)),
            big
        )
        .await,
        413
    );
    // Regression: a signed body that was not an event (not JSON; JSON but
    // not an object) got 400, which Stripe and HubSpot never retry: it was
    // lost by ferry's answer. Now it is kept in ferry.quarantine, and 200.
    for bad in ["{\"id\": \"evt_9\", \"type\": ", "[1, 2]"] {
        let resp = c
            .post(&url)
            .header("stripe-signature", stripe_headers("whsec_test", bad, now))
            .body(bad.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{bad}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            (v["accepted"].as_u64(), v["quarantined"].as_u64()),
            (Some(0), Some(1)),
            "{v}"
        );
    }
    // Typeform-style.
    let tf = r#"{"event_id": "tf_1", "event_type": "form_response", "form_response": {"form_id": "F1", "submitted_at": "2026-11-24T10:00:00Z", "hidden": {"email": "ann@a.io"}}}"#;
    let sig = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(ferry::extract::webhook::sign("tf_secret", tf.as_bytes()))
    };
    let turl = format!("{}/webhooks/forms", server.url());
    assert_eq!(
        post(
            &c,
            &turl,
            ("typeform-signature", format!("sha256={sig}")),
            tf.to_string()
        )
        .await,
        200
    );
    server.shutdown().await;

    assert_eq!(
        scalar(&dir, "select count(*) from billing.events").await,
        "1"
    );
    assert_eq!(
        scalar(&dir, "select event_id || ' ' || event_type || ' ' || contact_id || ' ' || account_id || ' ' || source_system from billing.events").await,
        "evt_1 invoice.paid cus_1 acct_1 stripe"
    );
    assert_eq!(
        scalar(
            &dir,
            "select contact_id || ' ' || cast(fired_at as varchar) from forms.events"
        )
        .await,
        "ann@a.io 2026-11-24T10:00:00Z"
    );
    assert_eq!(
        scalar(
            &dir,
            "select string_agg(stream || ' ' || origin || ' | ' || record || ' | ' || reason, '\n' order by record) from ferry.quarantine"
        )
        .await,
        "events POST /webhooks/billing | [1, 2] | the body is not a JSON object (one event); the sender (the vendor) signed it, so it was kept here instead of refused\n\
         events POST /webhooks/billing | {\"id\": \"evt_9\", \"type\":  | the body is not JSON (EOF while parsing a value at line 1 column 24); the sender (the vendor) signed it, so it was kept here instead of refused"
    );
}

/// 1,000 signed events posted at concurrency 50 (with 100 redeliveries):
/// every event lands exactly once. Then a crash after acknowledging: the
/// next start lands what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_load_1000_events_at_concurrency_50_land_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    webhook_load(&webhook_project(tmp.path())).await;
}

/// The same on an S3 lake whose server refuses some requests 503 and cuts
/// some connections after applying the PUT: the inbox's write-once files
/// still hold each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_load_on_s3_with_slowdowns_and_lost_replies_lands_exactly_once() {
    let Some(s3) = crate::s3::S3::start(&["--slowdown-every", "23", "--drop-every", "17"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = webhook_project(tmp.path());
    crate::s3::move_lake(&dir, &s3.lake_toml("hooks"));
    webhook_load(&dir).await;
}

async fn webhook_load(dir: &Path) {
    use futures::StreamExt;
    let dir = dir.to_path_buf();
    let project = Project::load(&dir).unwrap();
    let lake = Lake::open(&project.lake, &project.dir).unwrap();
    let server = ferry::serve::start(
        &project,
        lake.clone(),
        "127.0.0.1:0".parse().unwrap(),
        std::time::Duration::from_millis(250),
    )
    .await
    .unwrap();
    let url = format!("{}/webhooks/billing", server.url());
    let c = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let statuses: Vec<u16> = futures::stream::iter((0..1100).map(|i| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let body = stripe_event(i % 1000);
            post(
                &c,
                &url,
                ("stripe-signature", stripe_headers("whsec_test", &body, now)),
                body,
            )
            .await
        }
    }))
    .buffer_unordered(50)
    .collect()
    .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{:?}",
        statuses.iter().filter(|s| **s != 200).count()
    );
    server.shutdown().await;
    assert_eq!(
        scalar(
            &dir,
            "select count(*) || '/' || count(distinct event_id) from billing.events"
        )
        .await,
        "1000/1000"
    );

    // Acknowledged, then the process dies before landing: nothing is lost.
    let server = ferry::serve::start(
        &project,
        lake.clone(),
        "127.0.0.1:0".parse().unwrap(),
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let url = format!("{}/webhooks/billing", server.url());
    for i in 1000..1010 {
        let body = stripe_event(i);
        assert_eq!(
            post(
                &c,
                &url,
                ("stripe-signature", stripe_headers("whsec_test", &body, now)),
                body
            )
            .await,
            200
        );
    }
    server.kill();
    assert_eq!(
        scalar(&dir, "select count(*) from billing.events").await,
        "1000"
    );
    let server = ferry::serve::start(
        &project,
        lake.clone(),
        "127.0.0.1:0".parse().unwrap(),
        std::time::Duration::from_millis(100),
    )
    .await
    .unwrap();
    // A redelivery after the restart is still recognised.
    let url = format!("{}/webhooks/billing", server.url());
    let body = stripe_event(5);
    assert_eq!(
        post(
            &c,
            &url,
            ("stripe-signature", stripe_headers("whsec_test", &body, now)),
            body
        )
        .await,
        200
    );
    server.shutdown().await;
    assert_eq!(
        scalar(
            &dir,
            "select count(*) || '/' || count(distinct event_id) from billing.events"
        )
        .await,
        "1010/1010"
    );
}

/// The real `ferry extract`, killed with SIGKILL mid-run several times, then
/// run to completion: every record is in the lake (duplicates of the
/// re-fetched range are allowed and removable by primary key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_extract_then_rerun_loses_nothing() {
    use rand::Rng;
    let s = api(RestConfig {
        records: 3000,
        per_second: 40,
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = project(
        tmp.path(),
        &format!(
            r#"[sources.api]
type = "rest"
url = "{}"
requests_per_second = 40

[sources.api.streams.items]
path = "/cursor/items"
records = "data"
primary_key = "id"
pagination = {{ type = "cursor", cursor_path = "meta.next_cursor", param = "cursor", limit_param = "limit", limit = 25 }}
incremental = {{ cursor_field = "updated_at", param = "updated_since" }}
"#,
            s.base_url()
        ),
    );
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--project-dir")
            .arg(&dir)
            .args(["extract", "api.items"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = rand::rng();
    for _ in 0..5 {
        let mut child = run();
        tokio::time::sleep(std::time::Duration::from_millis(
            rng.random_range(200..2500),
        ))
        .await;
        let _ = child.kill();
        child.wait().unwrap();
    }
    assert!(run().wait().unwrap().success());
    assert_eq!(
        scalar(&dir, "select count(distinct id) from api.items").await,
        "3000"
    );
    assert_eq!(
        scalar(&dir, "select count(*) from (select id, row_number() over (partition by id order by _ferry_loaded_at desc) rn from api.items) where rn = 1").await,
        "3000"
    );
    // The built-in macro removes the re-landed duplicates in a model.
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("models/items_latest.sql"),
        "{{ config(materialized='view') }}\nselect * from {{ latest_by(source('api', 'items'), 'id') }}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(&dir)
        .args([
            "query",
            "select count(*) as n, count(distinct id) as ids from items_latest",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "n,ids\n3000,3000\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The cursor moved only with a complete run: the next run asks from the newest record on.
    let out = extract(&dir, &["api.items"]).await.unwrap();
    assert_eq!(out[0].rows, 1);
}

/// Every source example in the README parses, with the streams it shows.
#[test]
fn readme_source_examples_parse() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let secrets = ferry::project::SecretSource::new(
        [
            "HUBSPOT_TOKEN",
            "OUTREACH_TOKEN",
            "GONG_ACCESS_KEY",
            "GONG_ACCESS_SECRET",
            "ENRICH_KEY",
            "INTENT_KEY",
            "BILLING_SECRET",
            "STRIPE_WEBHOOK_SECRET",
            "HUBSPOT_APP_SECRET",
        ]
        .into_iter()
        .map(|k| (k.to_string(), format!("value-of-{k}")))
        .collect(),
    );
    let mut streams = Vec::new();
    let mut webhooks = Vec::new();
    for block in readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
    {
        // The extraction examples (the projects section has its own test).
        if !block.contains("type = \"")
            || !block.contains("[sources.")
            || block.contains("[project]")
        {
            continue;
        }
        let text = format!("[project]\nname = \"readme\"\n\n{block}");
        let p = Project::parse(
            Path::new("p"),
            Path::new("p/ferry.toml"),
            &text,
            &secrets,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}\n{block}"));
        for spec in p.extract.values() {
            for s in spec.streams() {
                streams.push(format!("{}.{s}", spec.name()));
            }
        }
        webhooks.extend(p.webhooks.keys().cloned());
    }
    for want in [
        "hubspot.contacts",
        "hubspot.companies",
        "hubspot.deals",
        "outreach.prospects",
        "outreach.sequence_steps",
        "gong.calls",
        "enrich.companies",
        "intent.signals",
        "billing_api.invoices",
        "events.attendees",
        "events.partner_leads",
    ] {
        assert!(
            streams.contains(&want.to_string()),
            "{want} missing from {streams:?}"
        );
    }
    // Children come after their parents.
    let pos = |s: &str| streams.iter().position(|x| x == s).unwrap();
    assert!(pos("outreach.sequences") < pos("outreach.sequence_steps"));
    assert_eq!(
        webhooks,
        vec!["billing".to_string(), "hubspot_events".to_string()]
    );
}
