//! SQL models end to end on the fixture project `tests/fixtures/gtm`:
//! seeds, nested models, macros, ephemeral CTEs, views, tables, an
//! incremental merge run twice, data tests, compile errors, cycles,
//! selection and concurrency.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry::models::{Workspace, dag};
use ferry::project::Project;

use crate::copy_dir;

/// A fresh copy of `tests/fixtures/<name>` in a temporary folder.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
        &dir,
    );
    (tmp, dir)
}

fn fixture() -> (tempfile::TempDir, PathBuf) {
    copy_fixture("gtm")
}

fn ferry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--project-dir")
        .arg(dir)
        .args(args)
        .env_remove("FERRY_LAKE")
        .env_remove("FERRY_LOG")
        .output()
        .expect("run ferry")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "ferry failed:\n{}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn csv(dir: &Path, sql: &str) -> String {
    ok(ferry(dir, &["query", sql, "--format", "csv"]))
}

/// Land a fixture data file into crm.contacts.
fn land(dir: &Path, file: &str) {
    ok(ferry(
        dir,
        &["land", "crm.contacts", dir.join(file).to_str().unwrap()],
    ));
}

/// Land, seed, run and test the fixture; returns its folder.
fn built() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = fixture();
    land(&dir, "data/contacts.jsonl");
    let seeded = ok(ferry(&dir, &["seed"]));
    assert!(
        seeded.contains("countries") && seeded.contains("7 rows"),
        "{seeded}"
    );
    let run = ok(ferry(&dir, &["run"]));
    assert!(run.contains("5 succeeded, 0 failed, 0 skipped"), "{run}");
    (tmp, dir)
}

#[test]
fn seed_run_query_and_test_the_fixture_project() {
    let (_tmp, dir) = built();
    assert_eq!(
        csv(
            &dir,
            "select id, email, iso_code, is_mql from customers order by id"
        ),
        "id,email,iso_code,is_mql\n1,ana@northwind.io,US,true\n2,ben@globex.com,US,true\n\
         3,claire@initech.fr,FR,false\n4,dev@gmail.com,US,false\n5,emma@umbrella.co.uk,GB,true\n"
    );
    // A view model is queryable by name too, though not persisted.
    assert_eq!(
        csv(&dir, "select count(*) as n from stg_contacts"),
        "n\n5\n"
    );
    assert!(!dir.join("lake/models/stg_contacts").exists());
    assert!(dir.join("lake/models/customers/_delta_log").is_dir());
    // Ephemeral models are inlined, never stored.
    assert!(!dir.join("lake/models/int_countries").exists());

    // Passing tests are one summary line; -v lists each.
    let quiet = ok(ferry(&dir, &["test"]));
    assert!(!quiet.contains("PASS  unique_customers_id"), "{quiet}");
    assert!(
        quiet.contains("7 tests: 7 passed, 0 warned, 0 failed"),
        "{quiet}"
    );
    let tests = ok(ferry(&dir, &["test", "-v"]));
    assert!(tests.contains("PASS  unique_customers_id"), "{tests}");
    assert!(
        tests.contains("PASS  relationships_contact_history_id"),
        "{tests}"
    );
    assert!(tests.contains("PASS  no_negative_scores"), "{tests}");
    assert!(tests.contains("7 passed, 0 warned, 0 failed"), "{tests}");

    let runs = csv(&dir, "select status, models, succeeded from ferry.runs");
    assert_eq!(runs, "status,models,succeeded\nsuccess,5,5\n");
    let models = csv(
        &dir,
        "select model, materialized, status, rows from ferry.model_runs order by model",
    );
    assert_eq!(
        models,
        "model,materialized,status,rows\ncontact_history,incremental,success,5\ncustomers,table,success,5\n\
         int_countries,ephemeral,success,\nmql_by_country,table,success,3\nstg_contacts,view,success,\n"
    );
}

#[test]
fn incremental_merge_updates_and_inserts_on_the_second_run() {
    let (_tmp, dir) = built();
    ok(ferry(
        &dir,
        &[
            "land",
            "crm.contacts",
            dir.join("data/contacts_update.jsonl").to_str().unwrap(),
        ],
    ));
    let run = ok(ferry(&dir, &["run", "--select", "contact_history"]));
    assert!(
        run.contains("contact_history") && run.contains("6 rows"),
        "{run}"
    );
    assert_eq!(
        csv(
            &dir,
            "select id, lead_score from contact_history order by id"
        ),
        "id,lead_score\n1,71\n2,90\n3,38\n4,12\n5,64\n6,77\n"
    );
    // Without a unique key, new rows are appended.
    std::fs::write(
        dir.join("models/marts/contact_log.sql"),
        "{{ config(materialized='incremental') }}\nselect id, lead_score from {{ ref('stg_contacts') }}\n\
         {% if is_incremental() %}where id > (select max(id) from {{ this }}){% endif %}\n",
    )
    .unwrap();
    ok(ferry(&dir, &["run", "--select", "contact_log"]));
    assert_eq!(csv(&dir, "select count(*) as n from contact_log"), "n\n6\n");
    std::fs::write(
        dir.join("data/more.jsonl"),
        "{\"id\": 7, \"email\": \"g@x.io\", \"country\": \"US\", \"lead_score\": 5, \"updated_at\": \"2026-11-12\"}\n",
    )
    .unwrap();
    ok(ferry(
        &dir,
        &[
            "land",
            "crm.contacts",
            dir.join("data/more.jsonl").to_str().unwrap(),
        ],
    ));
    ok(ferry(&dir, &["run", "--select", "contact_log"]));
    assert_eq!(
        csv(
            &dir,
            "select count(*) as n, max(id) as top from contact_log"
        ),
        "n,top\n7,7\n"
    );
    // A full refresh rebuilds to the same state.
    ok(ferry(
        &dir,
        &["run", "--select", "contact_history", "--full-refresh"],
    ));
    assert_eq!(
        csv(
            &dir,
            "select count(*) as n, count(distinct id) as ids from contact_history"
        ),
        "n,ids\n7,7\n"
    );
}

#[test]
fn a_failing_test_prints_rows_and_fails_the_command() {
    let (_tmp, dir) = built();
    std::fs::write(
        dir.join("sql/tests/no_hot_leads.sql"),
        "select id, lead_score from {{ ref('customers') }} where lead_score > 70",
    )
    .unwrap();
    let out = ferry(&dir, &["test", "--select", "customers"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("FAIL  no_hot_leads (1 failing row)"), "{t}");
    assert!(t.contains("| 1  | 71         |"), "{t}");
    // severity: warn reports without failing.
    std::fs::write(
        dir.join("sql/tests/no_hot_leads.sql"),
        "{{ config(severity='warn') }}\nselect id from {{ ref('customers') }} where lead_score > 70",
    )
    .unwrap();
    let out = ferry(&dir, &["test", "--select", "customers"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("WARN  no_hot_leads"));
}

#[test]
fn compile_catches_a_wrong_column_without_running_anything() {
    let (_tmp, dir) = fixture();
    land(&dir, "data/contacts.jsonl");
    std::fs::write(
        dir.join("models/marts/zz_bad.sql"),
        "{{ config(materialized='table') }}\nselect\n  id,\n  lead_scor\nfrom {{ ref('customers') }}\n",
    )
    .unwrap();
    let out = ferry(&dir, &["compile"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("models/marts/zz_bad.sql:4"), "{t}");
    assert!(t.contains("lead_scor"), "{t}");
    assert!(
        !dir.join("lake/models").exists(),
        "compile must not build anything"
    );
}

#[test]
fn compile_prints_the_rendered_sql_of_a_selected_model() {
    let (_tmp, dir) = fixture();
    land(&dir, "data/contacts.jsonl");
    let out = ok(ferry(&dir, &["compile", "--select", "customers"]));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/customers.sql");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&golden).unwrap());
}

#[test]
fn a_failed_model_skips_only_its_descendants() {
    let (_tmp, dir) = built();
    // Valid SQL that fails at run time, not at planning.
    std::fs::write(
        dir.join("models/marts/customers.sql"),
        "{{ config(materialized='table') }}\nselect id, email, 'US' as iso_code, lead_score, \
         cast(email as int) > 0 as is_mql from {{ ref('stg_contacts') }}\n",
    )
    .unwrap();
    let out = ferry(&dir, &["run"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("ERROR customers"), "{t}");
    assert!(t.contains("SKIP  mql_by_country"), "{t}");
    assert!(t.contains("OK    contact_history"), "{t}");
    assert!(t.contains("3 succeeded, 1 failed, 1 skipped"), "{t}");
    // The previous version of the table is still there and whole.
    assert_eq!(csv(&dir, "select count(*) as n from customers"), "n\n5\n");
    let rec = csv(
        &dir,
        "select status, failed, skipped from ferry.runs order by started_at desc limit 1",
    );
    assert_eq!(rec, "status,failed,skipped\nerror,1,1\n");
}

#[test]
fn independent_models_run_concurrently() {
    let (_tmp, dir) = built();
    ok(ferry(
        &dir,
        &[
            "run",
            "--threads",
            "4",
            "--select",
            "customers",
            "contact_history",
        ],
    ));
    let overlap = csv(
        &dir,
        "select count(*) as n from ferry.model_runs a join ferry.model_runs b \
         on a.run_id = b.run_id and a.model = 'customers' and b.model = 'contact_history' \
         where a.started_at < b.finished_at and b.started_at < a.finished_at \
         and a.run_id = (select max(run_id) from ferry.runs)",
    );
    assert_eq!(
        overlap, "n\n1\n",
        "the two models should have overlapped in time"
    );
}

#[test]
fn cycles_and_unknown_refs_are_explained() {
    let (_tmp, dir) = fixture();
    std::fs::write(dir.join("models/a.sql"), "select * from {{ ref('b') }}").unwrap();
    std::fs::write(dir.join("models/b.sql"), "select * from {{ ref('a') }}").unwrap();
    let t = text(&ferry(&dir, &["compile"]));
    assert!(
        t.contains("cycle: a -> b -> a") || t.contains("cycle: b -> a -> b"),
        "{t}"
    );

    std::fs::remove_file(dir.join("models/a.sql")).unwrap();
    std::fs::write(
        dir.join("models/b.sql"),
        "select 1 as x\nunion all\nselect * from {{ ref('customer') }}",
    )
    .unwrap();
    let t = text(&ferry(&dir, &["compile"]));
    assert!(
        t.contains(
            "models/b.sql:3: ref('customer') names no model, seed or snapshot; did you mean customers"
        ),
        "{t}"
    );
}

fn names(s: &[&str]) -> BTreeSet<String> {
    s.iter().map(|x| x.to_string()).collect()
}

#[test]
fn selection_syntax() {
    let (_tmp, dir) = fixture();
    let project = Project::load(&dir).unwrap();
    let ws = Workspace::load(&project, &[]).unwrap();
    let sel = |s: &[&str], e: &[&str]| {
        let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
        let e: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        dag::select(&ws.project, &ws.dag, &s, &e).unwrap()
    };
    assert_eq!(sel(&["customers"], &[]), names(&["customers"]));
    assert_eq!(
        sel(&["+customers"], &[]),
        names(&["countries", "customers", "int_countries", "stg_contacts"])
    );
    assert_eq!(
        sel(&["customers+"], &[]),
        names(&["customers", "mql_by_country"])
    );
    assert_eq!(sel(&["tag:marts"], &[]), names(&["customers"]));
    assert_eq!(
        sel(&["path:models/staging"], &[]),
        names(&["int_countries", "stg_contacts"])
    );
    assert_eq!(
        sel(&["stg_contacts+,tag:marts"], &[]),
        names(&["customers"])
    );
    assert_eq!(
        sel(&["customers mql_by_country"], &[]),
        names(&["customers", "mql_by_country"])
    );
    assert_eq!(
        sel(&["stg_contacts+"], &["customers+"]),
        names(&["contact_history", "stg_contacts"])
    );
    assert_eq!(sel(&[], &[]).len(), 6, "everything, seeds included");
    let err = dag::select(&ws.project, &ws.dag, &["customer".into()], &[]).unwrap_err();
    assert!(err.to_string().contains("did you mean customers"), "{err}");
}

#[test]
fn a_broken_contract_fails_before_writing_and_names_the_column() {
    let (_tmp, dir) = built();
    let schema = dir.join("models/marts/schema.yml");
    let yml = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(
        &schema,
        yml.replace(
            "- name: mqls\n        data_type: bigint",
            "- name: mqls\n        data_type: varchar",
        ),
    )
    .unwrap();
    let out = ferry(&dir, &["run", "--select", "mql_by_country"]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("contract: column mqls is declared varchar but the model returns Int64"),
        "{t}"
    );
    // Still the first version: nothing was written.
    let log = std::fs::read_dir(dir.join("lake/models/mql_by_country/_delta_log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(log, 1);
    // compile catches it too.
    assert_eq!(ferry(&dir, &["compile"]).status.code(), Some(1));
}

#[test]
fn docs_carry_column_lineage_through_joins_and_aggregates() {
    let (_tmp, dir) = fixture();
    land(&dir, "data/contacts.jsonl");
    ok(ferry(&dir, &["seed"]));
    ok(ferry(&dir, &["run"]));
    let out = ok(ferry(&dir, &["docs"]));
    assert!(
        out.contains("documented 5 models, 1 source, 1 seed"),
        "{out}"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("target/docs/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["version"], 2);
    let node = |id: &str| {
        manifest["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .clone()
    };
    let column = |m: &serde_json::Value, col: &str| {
        m["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == col)
            .unwrap()
            .clone()
    };
    let lineage = |m: &serde_json::Value, col: &str| -> Vec<String> {
        column(m, col)["lineage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                format!(
                    "{}/{}",
                    u["node"].as_str().unwrap(),
                    u["column"].as_str().unwrap()
                )
            })
            .collect()
    };
    // A join: columns come from either side, through the inlined ephemeral CTE.
    let customers = node("model.customers");
    assert_eq!(lineage(&customers, "email"), ["model.stg_contacts/email"]);
    assert_eq!(lineage(&customers, "iso_code"), ["seed.countries/iso_code"]);
    assert_eq!(
        lineage(&customers, "is_mql"),
        ["model.stg_contacts/lead_score"]
    );
    assert_eq!(customers["columns"][0]["description"], "CRM contact id.");
    // SQL type names, not Arrow's.
    assert_eq!(column(&customers, "email")["type"], "VARCHAR");
    assert_eq!(column(&customers, "is_mql")["type"], "BOOLEAN");
    // An aggregate: group keys and aggregated columns; count(*) reads no column.
    let agg = node("model.mql_by_country");
    assert_eq!(lineage(&agg, "iso_code"), ["model.customers/iso_code"]);
    assert_eq!(lineage(&agg, "mqls"), ["model.customers/is_mql"]);
    assert!(lineage(&agg, "contacts").is_empty());
    // Through a window function and a subquery, down to the raw stream,
    // which is a node of its own with its columns and when it last landed.
    let stg = node("model.stg_contacts");
    assert_eq!(lineage(&stg, "email"), ["source.crm.contacts/email"]);
    assert!(
        stg["depends_on"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("source.crm.contacts"))
    );
    let source = node("source.crm.contacts");
    assert_eq!(source["layer"], "sources");
    assert!(source["freshness"]["loaded_at"].is_string(), "{source}");
    assert_eq!(column(&source, "email")["type"], "VARCHAR");
    assert!(
        source["referenced_by"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("model.stg_contacts"))
    );
    // A seed is a page too (its links are not broken).
    let seed = node("seed.countries");
    assert_eq!(seed["kind"], "seed");
    assert!(!seed["columns"].as_array().unwrap().is_empty());
    // Last run and freshness per model; tests with their last results.
    assert_eq!(customers["last_run"]["status"], "success");
    assert!(customers["freshness"]["loaded_at"].is_string());
    let tests = customers["tests"].as_array().unwrap();
    assert!(!tests.is_empty());
    assert!(tests.iter().all(|t| t["status"] == "not run"), "{tests:?}");
    ok(ferry(&dir, &["test"]));
    ok(ferry(&dir, &["docs"]));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("target/docs/manifest.json")).unwrap(),
    )
    .unwrap();
    let customers = manifest["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "model.customers")
        .unwrap()
        .clone();
    assert!(
        customers["tests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "pass"),
        "{customers}"
    );
    // One self-contained page: the manifest inlined, nothing fetched.
    let html = std::fs::read_to_string(dir.join("target/docs/index.html")).unwrap();
    assert!(
        html.contains("\"id\":\"model.customers\""),
        "manifest not inlined"
    );
    assert!(!html.contains("/*FERRY_MANIFEST*/null"));
    for external in ["src=\"http", "href=\"http", "@import", "cdn."] {
        assert!(!html.contains(external), "the page fetches {external}");
    }
}

#[test]
fn a_dbt_project_runs_unchanged() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    // dbt's --vars mapping, as a dbt user types it.
    ok(ferry(
        &dir,
        &["seed", "--vars", r#"{"load_source_data": true}"#],
    ));
    let run = ok(ferry(
        &dir,
        &[
            "run",
            "--vars",
            "{completed_statuses: [completed, shipped]}",
        ],
    ));
    assert!(run.contains("3 succeeded, 0 failed"), "{run}");
    let tests = ok(ferry(&dir, &["test"]));
    assert!(tests.contains("5 passed, 0 warned, 0 failed"), "{tests}");
    assert_eq!(
        csv(
            &dir,
            "select customer_id, number_of_orders, lifetime_value from customers order by 1"
        ),
        "customer_id,number_of_orders,lifetime_value\n1,1,10.0\n2,1,25.0\n3,1,20.0\n"
    );
    // dbt's folder config: marts are tables in the project's own lake, staging are views.
    assert!(dir.join("lake/models/customers/_delta_log").is_dir());
    assert!(!dir.join("lake/models/stg_orders").exists());
}

/// Rendering golden file: macros with default arguments, `var()` lists in a
/// `{% for %}` loop and dbt's folder configs, on the dbt fixture.
#[test]
fn rendering_of_macros_loops_and_vars_matches_the_golden_file() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    let out = ok(ferry(
        &dir,
        &["compile", "--select", "stg_orders customers"],
    ));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jaffle_rendered.sql");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&golden).unwrap());
}

/// dbt's `sources:`: a source whose identifier is a seed reads the seed
/// (and depends on it); one pointing at a lake stream reads the stream;
/// `ferry source freshness` reports and fails the way dbt does.
#[test]
fn declared_sources_resolve_to_seeds_and_streams_and_freshness_fails_like_dbt() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    std::fs::write(
        dir.join("models/sources.yml"),
        r#"version: 2
sources:
  - name: ecom
    schema: raw
    loaded_at_field: order_date
    freshness:
      warn_after: {count: 12, period: hour}
    tables:
      - name: orders
        identifier: raw_orders
        freshness:
          warn_after: {count: 1, period: day}
          error_after: {count: 7, period: day}
      - name: customers
        identifier: raw_customers
        freshness: null
  - name: crm
    tables:
      - name: people
        identifier: contacts
        loaded_at_field: updated_at
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("models/order_count.sql"),
        "select count(*) as n, sum(amount_cents) as cents from {{ source('ecom', 'orders') }}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/people.sql"),
        "select count(*) as n from {{ source('crm', 'people') }}\n",
    )
    .unwrap();
    // The seeds are loaded into `raw` (the common generate_schema_name
    // override: a custom schema is used as it is), where the source reads.
    let yml = std::fs::read_to_string(dir.join("dbt_project.yml")).unwrap();
    std::fs::write(
        dir.join("dbt_project.yml"),
        format!("{yml}\nseeds:\n  jaffle_shop:\n    +schema: raw\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("macros/generate_schema_name.sql"),
        "{% macro generate_schema_name(custom_schema_name, node) -%}\n\
         {%- if custom_schema_name is none -%}{{ target.schema }}\
         {%- else -%}{{ custom_schema_name | trim }}{%- endif -%}\n\
         {%- endmacro %}\n",
    )
    .unwrap();
    land(
        &dir,
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gtm/data/contacts.jsonl"
        ),
    );
    ok(ferry(&dir, &["seed"]));
    let run = ok(ferry(&dir, &["run"]));
    assert!(run.contains("5 succeeded, 0 failed"), "{run}");
    let seeded = csv(
        &dir,
        "select count(*) as n, sum(amount_cents) as cents from raw.raw_orders",
    );
    assert_eq!(csv(&dir, "select n, cents from order_count"), seeded);
    let streamed = csv(&dir, "select count(*) as n from crm.contacts");
    assert_eq!(csv(&dir, "select n from people"), streamed);
    // The model waits for its seed: selecting it with its ancestors includes the seed.
    let plan = ok(ferry(&dir, &["compile", "--select", "order_count"]));
    assert!(plan.contains("from raw_orders"), "{plan}");

    // 2018 orders are years past error_after: ERROR STALE, exit 1, dbt's artifact.
    let out = ferry(&dir, &["source", "freshness"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ERROR STALE freshness of ecom.orders"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Done. PASS=0 WARN=0 ERROR=1 SKIP=0 TOTAL=1"),
        "{stdout}"
    );
    let artifact: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("target/sources.json")).unwrap()).unwrap();
    assert_eq!(artifact["results"][0]["status"], "error");
    assert_eq!(
        artifact["results"][0]["unique_id"],
        "source.jaffle_shop.ecom.orders"
    );

    // Warn only: reported, not failed.
    let yml = std::fs::read_to_string(dir.join("models/sources.yml")).unwrap();
    std::fs::write(
        dir.join("models/sources.yml"),
        yml.replace("          error_after: {count: 7, period: day}\n", ""),
    )
    .unwrap();
    let warn = ok(ferry(
        &dir,
        &["source", "freshness", "--select", "source:ecom"],
    ));
    assert!(warn.contains("WARN freshness of ecom.orders"), "{warn}");
    assert!(warn.contains("PASS=0 WARN=1 ERROR=0"), "{warn}");
}

/// Regression: DataFusion's integer `/` truncates, DuckDB's does not, so a
/// dbt-duckdb macro like `(cents / 100)::numeric(16,2)` turned every amount
/// under a dollar into 0.00. ferry divides as DuckDB does.
#[test]
fn integer_division_is_real_division_as_in_duckdb() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    assert_eq!(
        csv(
            &dir,
            "select cast(cents / 100 as numeric(16,2)) as dollars, 7 / 2 as half, floor(7 / 2) as floored \
             from (values (42), (1999)) as t(cents) order by 1"
        ),
        "dollars,half,floored\n0.42,3.5,3.0\n19.99,3.5,3.0\n"
    );
    // As in DuckDB, x / 0 is NULL (DataFusion's integer division fails on it).
    assert_eq!(csv(&dir, "select 7 / 0 is null as z"), "z\ntrue\n");
}

/// Regression (found by the dbt-duckdb benchmark): a share of a total,
/// `revenue / sum(revenue) over ()` on decimals, kept DataFusion's scale of
/// 6 and the shares summed to 4.995 instead of 5. DuckDB divides decimals
/// as doubles; so does ferry. `^` is a power and `//` integer division, as
/// in DuckDB (DataFusion's `^` is a bitwise xor: 2 ^ 3 = 1).
#[test]
fn decimal_division_power_and_integer_division_follow_duckdb() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    assert_eq!(
        csv(
            &dir,
            "select round(sum(share) * 1000000) as parts_per_million, arrow_typeof(min(share)) as t from (               select cast(v as decimal(16,2)) / sum(cast(v as decimal(16,2))) over () as share                from (values (1.0), (2.0), (4.0), (7.0), (11.0), (13.0), (17.0), (19.0), (23.0), (3000000.0)) as t(v))"
        ),
        "parts_per_million,t\n1000000.0,Float64\n"
    );
    assert_eq!(
        csv(
            &dir,
            "select 2 ^ 3 as p, 2 ^ 0.5 > 1.41 as root, 7 // 2 as d, 1.0 * 7 // 2 as f"
        ),
        "p,root,d,f\n8.0,true,3,3.5\n"
    );
}

/// A dbt project with a package in `dbt_packages/` (as `dbt deps` leaves
/// it): namespaced macros (`fixture_utils.surrogate_key`), `adapter.dispatch`
/// with the root project searched first, `{{ return(...) }}`, and dbt's own
/// cross-database macros (`dbt.date_trunc`, ...) rendered for DataFusion.
#[test]
fn packages_dispatch_and_dbt_macros_run_unchanged() {
    let (_tmp, dir) = copy_fixture("dbt_packages");
    ok(ferry(&dir, &["seed"]));
    let run = ok(ferry(&dir, &["run"]));
    assert!(run.contains("4 succeeded, 0 failed"), "{run}");
    // dbt's context: env_var with a default, target, fromjson/tojson, execute.
    assert_eq!(
        csv(
            &dir,
            "select from_env, target_name, region, row_limit, as_json, executed from context"
        ),
        "from_env,target_name,region,row_limit,as_json,executed\nfallback,dev,eu,3,\"{\"\"a\"\":1}\",true\n"
    );
    // By hand: md5 of 'id-user_id'; the month; +7 days; days since 1 Jan;
    // cents / 100 rounded by the project's override of default__round_money
    // (a double, not the package's numeric(16,2)).
    assert_eq!(
        csv(
            &dir,
            "select order_key, id, order_month, due_date, days_in, amount, nothing, part, pos, quoted from orders order by id"
        ),
        "order_key,id,order_month,due_date,days_in,amount,nothing,part,pos,quoted\n\
         ea66c06c1e1c05fa9f1aa39d98dc5bc1,1,2018-01-01T00:00:00,2018-01-08,0,10.0,,b,2,it's\n\
         c22c60349630d688cef20a3fd708ad87,2,2018-01-01T00:00:00,2018-01-09,1,20.0,,b,2,it's\n\
         c9e6e7b69f98f516a54cfe2c9e25fb3f,3,2018-01-01T00:00:00,2018-01-11,3,5.0,,b,2,it's\n\
         2f5bb7747efda0546636fb385a3fa593,4,2018-01-01T00:00:00,2018-01-12,4,25.0,,b,2,it's\n"
    );
    assert_eq!(
        csv(
            &dir,
            "select any_value, any_returned, statuses from aggregates"
        ),
        "any_value,any_returned,statuses\ntrue,true,\"completed,completed,returned,shipped\"\n"
    );
    assert_eq!(
        csv(
            &dir,
            "select date_trunc, dateadd, datediff_day, datediff_month, last_day, concat, hash, safe_cast, split_part, position, replace, right_, length, string_literal, escaped from all_dbt_macros"
        ),
        "date_trunc,dateadd,datediff_day,datediff_month,last_day,concat,hash,safe_cast,split_part,position,replace,right_,length,string_literal,escaped\n\
         2024-03-01T00:00:00,2024-02-29,60,2,2024-02-29,ab,0cc175b9c0f1b6a831c399e269772661,,b,2,axc,bc,3,it's,it's\n"
    );
    // The SQL each dbt.* macro renders to, pinned.
    let out = ok(ferry(&dir, &["compile", "--select", "all_dbt_macros"]));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/dbt_macros.sql");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&golden).unwrap());
    // Generic tests from the package (`fixture_utils.*`, written as
    // {% test %} blocks) and the project's own, with their arguments and
    // severity; the amount of 25.00 is outside accepted_range's 0..20.
    let tests = ok(ferry(&dir, &["test", "-v"]));
    assert!(
        tests.contains("PASS  fixture_utils_expression_is_true_orders\n"),
        "{tests}"
    );
    assert!(
        tests.contains("PASS  fixture_utils_unique_combination_of_columns_orders"),
        "{tests}"
    );
    assert!(
        tests.contains("WARN  fixture_utils_accepted_range_orders_amount (1 failing row)"),
        "{tests}"
    );
    assert!(tests.contains("PASS  is_positive_orders_amount"), "{tests}");
    assert!(tests.contains("4 passed, 1 warned, 0 failed"), "{tests}");
    // exceptions.raise_compiler_error stops with the model's file and line.
    std::fs::write(
        dir.join("models/refuses.sql"),
        "{{ exceptions.raise_compiler_error('no ' ~ target.type) }}\nselect 1",
    )
    .unwrap();
    let e = text(&ferry(&dir, &["compile"]));
    assert!(
        e.contains("models/refuses.sql:1") && e.contains("compilation error: no datafusion"),
        "{e}"
    );
    std::fs::remove_file(dir.join("models/refuses.sql")).unwrap();
    // Regression: a macro that dispatches to its own name (dbt never picks
    // the bare name) and a wrapper calling into a package that searches the
    // project first used to recurse until the stack overflowed.
    std::fs::write(
        dir.join("macros/loops.sql"),
        "{% macro loop_me() %}{{ return(adapter.dispatch('loop_me')()) }}{% endmacro %}\n\
         {% macro surrogate_key(f) %}{{ fixture_utils.surrogate_key(f) }}{% endmacro %}\n\
         {% macro forever() %}{{ shop.forever() }}{% endmacro %}\n",
    )
    .unwrap();
    for (model, want) in [
        (
            "{{ loop_me() }}",
            "no datafusion__loop_me or default__loop_me",
        ),
        ("{{ forever() }}", "nest deeper than"),
    ] {
        std::fs::write(dir.join("models/loops.sql"), format!("select {model} as x")).unwrap();
        let e = text(&ferry(&dir, &["compile", "--select", "loops"]));
        assert!(e.contains(want), "{model}: {e}");
    }
    std::fs::write(
        dir.join("models/loops.sql"),
        "select {{ surrogate_key(['id']) }} as k from {{ ref('raw_orders') }}",
    )
    .unwrap();
    let sql = ok(ferry(&dir, &["compile", "--select", "loops"]));
    assert!(sql.contains("md5("), "{sql}");
    std::fs::remove_file(dir.join("models/loops.sql")).unwrap();
    std::fs::remove_file(dir.join("macros/loops.sql")).unwrap();
    // A package test that is not installed says where packages come from.
    let schema = std::fs::read_to_string(dir.join("models/schema.yml")).unwrap();
    std::fs::write(
        dir.join("models/schema.yml"),
        schema.replace(
            "      - is_positive",
            "      - is_positive\n          - dbt_utils.not_constant",
        ),
    )
    .unwrap();
    let e = text(&ferry(&dir, &["test"]));
    assert!(
        e.contains("unknown data test `dbt_utils.not_constant`") && e.contains("dbt_packages/"),
        "{e}"
    );
    std::fs::write(dir.join("models/schema.yml"), schema).unwrap();
    // A namespace that is not installed says so.
    std::fs::write(
        dir.join("models/missing.sql"),
        "select {{ dbt_utils.generate_surrogate_key(['id']) }} as k",
    )
    .unwrap();
    let e = text(&ferry(&dir, &["compile"]));
    assert!(
        e.contains("models/missing.sql:1")
            && e.contains("dbt_packages/")
            && e.contains("generate_surrogate_key"),
        "{e}"
    );
}

/// `dispatch:` in dbt_project.yml sets a namespace's search order: listing
/// only the package skips the project's override.
#[test]
fn the_dispatch_config_sets_the_search_order() {
    let (_tmp, dir) = copy_fixture("dbt_packages");
    let yml = std::fs::read_to_string(dir.join("dbt_project.yml")).unwrap();
    std::fs::write(
        dir.join("dbt_project.yml"),
        format!("{yml}\ndispatch:\n  - macro_namespace: fixture_utils\n    search_order: ['fixture_utils']\n"),
    )
    .unwrap();
    let sql = ok(ferry(&dir, &["compile", "--select", "orders"]));
    assert!(
        sql.contains("cast(amount_cents / 100 as numeric(16, 2)) as amount"),
        "{sql}"
    );
}

/// A git repository holding the fixture package fixture_utils under
/// `sub/`, on branch main; returns its file:// URL.
fn git_package(root: &Path) -> String {
    let repo = root.join("gitpkg");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dbt_packages/dbt_packages/fixture_utils"),
        &repo.join("sub/fixture_utils"),
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v1"]);
    format!("file://{}", repo.display())
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

/// The dbt_deps fixture with its git package's entry in packages.yml.
fn deps_fixture() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = copy_fixture("dbt_deps");
    let url = git_package(tmp.path());
    let packages = std::fs::read_to_string(dir.join("packages.yml")).unwrap();
    std::fs::write(
        dir.join("packages.yml"),
        format!("{packages}  - git: \"{url}\"\n    revision: main\n    subdirectory: sub/fixture_utils\n"),
    )
    .unwrap();
    (tmp, dir)
}

/// `ferry deps` installs a local package and a git package (a branch, a
/// subdirectory) into dbt_packages/ and pins the commit in
/// package-lock.yml; the packages' macros, generic tests, models and seeds
/// run, and vars scoped to a package reach its models and macros.
#[test]
fn deps_installs_local_and_git_packages_whose_models_seeds_and_vars_work() {
    let (tmp, dir) = deps_fixture();
    // Before deps, the package namespace is missing and says where packages come from.
    let e = text(&ferry(&dir, &["run"]));
    assert!(e.contains("dbt_packages/"), "{e}");
    let out = ok(ferry(&dir, &["deps"]));
    assert!(
        out.contains("Installed fixture_dates from local local_packages/fixture_dates")
            && out.contains("Installed fixture_utils from git"),
        "{out}"
    );
    let lock = std::fs::read_to_string(dir.join("package-lock.yml")).unwrap();
    assert!(
        lock.contains("name: fixture_utils") && lock.contains("revision: "),
        "{lock}"
    );
    ok(ferry(&dir, &["seed"]));
    let run = ok(ferry(&dir, &["run"]));
    assert!(run.contains("3 succeeded, 0 failed"), "{run}");
    // run_results names a package's model by its package, as the manifest does.
    let results = std::fs::read_to_string(dir.join("target/run_results.json")).unwrap();
    assert!(
        results.contains("\"model.fixture_dates.fiscal_calendar\""),
        "{results}"
    );
    // By hand, fiscal year starting in April (the project's value for the
    // package, over its default of 1): 2024-03-31 is FY2024 Q4, 2024-04-01
    // FY2025 Q1, 2024-12-15 FY2025 Q3; keys are md5('1-1'), md5('2-3'), md5('3-1').
    assert_eq!(
        csv(&dir, "select * from orders_fiscal order by id"),
        "order_key,id,fiscal_year,fiscal_quarter,label\n\
         ea66c06c1e1c05fa9f1aa39d98dc5bc1,1,2024,4,calendar\n\
         c22c60349630d688cef20a3fd708ad87,2,2025,1,calendar\n\
         c9e6e7b69f98f516a54cfe2c9e25fb3f,3,2025,3,calendar\n"
    );
    // The package's seed was loaded, its model materialized as the project
    // configures it (a table, over the package's own `view`).
    assert_eq!(csv(&dir, "select count(*) as n from months"), "n\n12\n");
    let tests = ok(ferry(&dir, &["test", "-v"]));
    assert!(
        tests.contains("PASS  fixture_utils_expression_is_true_orders_fiscal")
            && tests.contains("PASS  unique_fiscal_calendar_month_num")
            && tests.contains("7 passed, 0 warned, 0 failed"),
        "{tests}"
    );
    // `package:` selects a package's models; --vars reach a package's scoped names.
    let run = ok(ferry(
        &dir,
        &[
            "run",
            "--select",
            "package:fixture_dates",
            "--vars",
            "fixture_dates:label=cli",
        ],
    ));
    assert!(run.contains("1 succeeded"), "{run}");
    assert_eq!(
        csv(&dir, "select distinct label from fiscal_calendar"),
        "label\ncli\n"
    );

    // The lock pins the commit: a new commit on main is not installed until --upgrade.
    let repo = tmp.path().join("gitpkg");
    std::fs::write(
        repo.join("sub/fixture_utils/macros/version.sql"),
        "{% macro version() %}0.2{% endmacro %}\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v2"]);
    std::fs::remove_dir_all(dir.join("dbt_packages")).unwrap();
    ok(ferry(&dir, &["deps"]));
    let installed = dir.join("dbt_packages/fixture_utils/macros/version.sql");
    assert!(!installed.exists(), "the lock's commit is installed");
    ok(ferry(&dir, &["deps", "--upgrade"]));
    assert!(installed.exists(), "--upgrade takes the branch's new head");
    assert_ne!(
        std::fs::read_to_string(dir.join("package-lock.yml")).unwrap(),
        lock
    );

    // A dbt Hub package ferry cannot download: the message says what to do.
    std::fs::write(
        dir.join("packages.yml"),
        "packages:\n  - package: dbt-labs/dbt_utils\n    version: [\">=1.0.0\", \"<2.0.0\"]\n",
    )
    .unwrap();
    let e = text(&ferry(&dir, &["deps", "--upgrade"]));
    assert!(
        e.contains("dbt-labs/dbt_utils") && e.contains("dbt deps") && e.contains("- git:"),
        "{e}"
    );
    // A token in a git URL (from env_var) is neither printed nor locked.
    std::fs::write(
        dir.join("packages.yml"),
        "packages:\n  - git: \"https://{{ env_var('FERRY_TEST_GIT_TOKEN') }}@127.0.0.1:9/nope.git\"\n    revision: v1\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--project-dir"])
        .arg(&dir)
        .args(["deps", "--upgrade"])
        .env("FERRY_TEST_GIT_TOKEN", "s3cr3t-token")
        .output()
        .unwrap();
    let e = text(&o);
    assert!(!o.status.success() && !e.contains("s3cr3t-token"), "{e}");
    // Unparsable entries name the file and entry.
    std::fs::write(dir.join("packages.yml"), "packages:\n  - nonsense: 1\n").unwrap();
    let e = text(&ferry(&dir, &["deps"]));
    assert!(
        e.contains("packages.yml: packages[0] is not a package"),
        "{e}"
    );
}

/// dbt unit tests: mock inputs as dict, csv (inline and a fixture file)
/// and sql rows, `this` and is_incremental, var and macro overrides; they
/// run before anything is built and leave the lake untouched; a failure
/// prints the rows that differ; test_type: selects them.
#[test]
fn unit_tests_run_on_mocks_and_print_a_row_diff() {
    let (_tmp, dir) = deps_fixture();
    ok(ferry(&dir, &["deps"]));
    let out = ok(ferry(&dir, &["test", "--select", "test_type:unit", "-v"]));
    for name in [
        "fiscal_year_starts_in_april (orders_fiscal)",
        "big_orders_full_refresh (big_orders)",
        "big_orders_incremental (big_orders)",
    ] {
        assert!(out.contains(&format!("PASS  unit test {name}")), "{out}");
    }
    assert!(out.contains("3 passed, 0 warned, 0 failed"), "{out}");
    // Nothing was built or stored.
    assert!(!dir.join("lake/models").exists() && !dir.join("lake/seeds").exists());
    // test_type:data runs the data tests only (they need the tables).
    ok(ferry(&dir, &["seed"]));
    ok(ferry(&dir, &["run"]));
    let out = ok(ferry(&dir, &["test", "--select", "test_type:data"]));
    assert!(
        !out.contains("unit test") && out.contains("4 passed"),
        "{out}"
    );
    // A wrong expectation fails with the differing rows, in the expect's column order.
    let yml = dir.join("models/unit_tests.yml");
    let original = std::fs::read_to_string(&yml).unwrap();
    std::fs::write(
        &yml,
        original.replace(
            "- {id: 2, fiscal_year: 2025, fiscal_quarter: 4}",
            "- {id: 2, fiscal_year: 2024, fiscal_quarter: 4}",
        ),
    )
    .unwrap();
    let o = ferry(&dir, &["test", "--select", "orders_fiscal,test_type:unit"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("FAIL  unit test fiscal_year_starts_in_april (orders_fiscal): 2 rows differ")
            && out.contains("@@  | id | fiscal_year | fiscal_quarter |")
            && out.contains("    | 1  | 2025        | 1              |")
            && out.contains("+++ | 2  | 2025        | 4              |")
            && out.contains("--- | 2  | 2024        | 4              |")
            && !out.contains("big_orders"),
        "{out}"
    );
    // An input the model reads but the test does not give is named, with its line.
    std::fs::write(
        &yml,
        original.replace("input: ref('fiscal_calendar')", "input: ref('months')"),
    )
    .unwrap();
    let out = text(&ferry(&dir, &["test", "--select", "test_type:unit"]));
    assert!(
        out.contains(
            "models/orders_fiscal.sql:8 reads ref('fiscal_calendar'), which the test does not give"
        ),
        "{out}"
    );
    // A column the input does not have is refused.
    std::fs::write(
        &yml,
        original.replace("{id: 1, user_id: 1,", "{id: 1, nope: 1,"),
    )
    .unwrap();
    let out = text(&ferry(&dir, &["test", "--select", "test_type:unit"]));
    assert!(
        out.contains("column nope is not a column of the input"),
        "{out}"
    );
}

/// Snapshots (SCD type 2), YAML (timestamp, hard_deletes: new_record) and a
/// legacy block (check, invalidate_hard_deletes), run over changed seeds:
/// history is kept, unchanged runs add nothing, a deleted key gets a
/// deletion record and comes back as a new version; `ferry build` runs them.
#[test]
fn snapshots_keep_history_over_changed_seeds() {
    let (_tmp, dir) = deps_fixture();
    ok(ferry(&dir, &["deps"]));
    ok(ferry(&dir, &["seed"]));
    let out = ok(ferry(&dir, &["snapshot"]));
    assert!(out.contains("2 snapshot(s), 0 failed"), "{out}");
    let customers = dir.join("seeds/customers.csv");
    // Ada moves to platinum, Cy is deleted, Di arrives.
    std::fs::write(
        &customers,
        "id,name,tier,updated_at\n1,Ada,platinum,2024-02-01 00:00:00\n2,Bob,silver,2024-01-01 00:00:00\n4,Di,gold,2024-02-02 00:00:00\n",
    )
    .unwrap();
    ok(ferry(&dir, &["seed"]));
    let out = ok(ferry(&dir, &["snapshot"]));
    assert!(
        out.contains(
            "customers_snapshot                    3 new versions        2 closed          6 rows"
        ),
        "{out}"
    );
    // By hand: versions valid from their updated_at; Ada's gold version
    // closed when platinum starts; Cy's closed at the run and followed by a
    // deletion record.
    let history = "select id, tier, cast(dbt_valid_from as varchar) as valid_from, \
                   case when dbt_valid_to is null then 'current' when id = 3 then 'run time' \
                   else cast(dbt_valid_to as varchar) end as valid_to, dbt_is_deleted \
                   from customers_snapshot order by id, dbt_valid_from";
    let second = "id,tier,valid_from,valid_to,dbt_is_deleted\n\
         1,gold,2024-01-01T00:00:00,2024-02-01T00:00:00,False\n\
         1,platinum,2024-02-01T00:00:00,current,False\n\
         2,silver,2024-01-01T00:00:00,current,False\n\
         3,bronze,2024-01-01T00:00:00,run time,False\n";
    let got = csv(&dir, history);
    assert!(got.starts_with(second), "{got}");
    assert!(
        got.contains("\n3,bronze,")
            && got.ends_with("current,True\n4,gold,2024-02-02T00:00:00,current,False\n"),
        "{got}"
    );
    assert_eq!(
        csv(
            &dir,
            "select id, tier, dbt_valid_to is null as current from tiers_snapshot order by id, dbt_valid_from"
        ),
        "id,tier,current\n1,gold,false\n1,platinum,true\n2,silver,true\n3,bronze,false\n4,gold,true\n"
    );
    // Unchanged input: nothing new.
    let out = ok(ferry(&dir, &["snapshot", "--select", "customers_snapshot"]));
    assert!(
        out.contains("0 new versions        0 closed          6 rows")
            && !out.contains("tiers_snapshot"),
        "{out}"
    );
    // Cy comes back: the deletion record is closed and a new version starts.
    std::fs::write(
        &customers,
        "id,name,tier,updated_at\n1,Ada,platinum,2024-02-01 00:00:00\n2,Bob,silver,2024-01-01 00:00:00\n3,Cy,silver,2024-03-01 00:00:00\n4,Di,gold,2024-02-02 00:00:00\n",
    )
    .unwrap();
    ok(ferry(&dir, &["seed"]));
    let out = ok(ferry(&dir, &["build", "--skip-sync"]));
    assert!(out.contains("== snapshot"), "{out}");
    assert_eq!(
        csv(
            &dir,
            "select tier, dbt_is_deleted, dbt_valid_to is null as current from customers_snapshot where id = 3 order by dbt_is_deleted, dbt_valid_from"
        ),
        "tier,dbt_is_deleted,current\nbronze,False,false\nsilver,False,true\nbronze,True,false\n"
    );
    assert_eq!(
        csv(
            &dir,
            "select count(*) as n from customers_snapshot where dbt_valid_to is null"
        ),
        "n\n4\n"
    );
    // A snapshot without a key names its file.
    std::fs::write(
        dir.join("snapshots/broken.sql"),
        "{% snapshot broken %}{{ config(strategy='check', check_cols='all') }} select 1 as id {% endsnapshot %}",
    )
    .unwrap();
    let e = text(&ferry(&dir, &["snapshot", "--select", "broken"]));
    assert!(
        e.contains("snapshots/broken.sql (snapshot broken): a snapshot needs unique_key"),
        "{e}"
    );
}

/// Regression: `return()` neither ended a macro nor kept its value's type,
/// so `{% set cols = m() %}` got the text of a list; and
/// `adapter.dispatch(..., macro_namespace=...)` as a keyword failed.
#[test]
fn return_gives_typed_values_and_ends_the_macro() {
    let (_tmp, dir) = copy_fixture("dbt_packages");
    std::fs::write(
        dir.join("dbt_packages/fixture_utils/macros/returns.sql"),
        "{% macro column_list() %}{{ return(['id', 'amount_cents']) }}{% endmacro %}\n\
         {% macro early(x) %}{% if x %}{{ return('early') }}{% endif %}{{ return('late') }}{% endmacro %}\n\
         {% macro uses_sibling() %}{% set inner = column_list() %}{{ return(inner | length + 40) }}{% endmacro %}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("macros/returns.sql"),
        "{% macro my_numbers() %}{{ return({'a': 1, 'b': [2, 3]}) }}{% endmacro %}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/returns.sql"),
        "{% set cols = fixture_utils.column_list() %}{% set nums = my_numbers() %}\
         select {{ cols | length }} as n, '{{ cols[1] }}' as second, \
         '{{ fixture_utils.early(true) }}' as e1, '{{ fixture_utils.early(false) }}' as e2, \
         {{ fixture_utils.uses_sibling() }} as sibling, {{ nums.b | sum + nums.a }} as total, \
         {{ adapter.dispatch('round_money', macro_namespace='fixture_utils')('1.234') }} as money",
    )
    .unwrap();
    ok(ferry(&dir, &["seed"]));
    ok(ferry(&dir, &["run", "--select", "returns"]));
    assert_eq!(
        csv(
            &dir,
            "select n, second, e1, e2, sibling, total, money from returns"
        ),
        "n,second,e1,e2,sibling,total,money\n2,amount_cents,early,late,42,6,1.23\n"
    );
}

/// The parts of dbt's context that run queries while rendering, as
/// dbt_utils uses them: run_query (an agate-like table), statement /
/// load_result, adapter.get_columns_in_relation and get_relation, graph;
/// while parsing `execute` is false and they return nothing.
#[test]
fn run_query_statement_relations_and_graph_work_as_packages_use_them() {
    let (_tmp, dir) = copy_fixture("dbt_packages");
    std::fs::write(
        dir.join("dbt_packages/fixture_utils/macros/introspection.sql"),
        r#"{% macro get_column_values(table, column) %}
  {%- if not execute %}{{ return([]) }}{% endif -%}
  {%- set q %}select distinct {{ column }} from {{ table }} order by 1{% endset -%}
  {%- set r = run_query(q) -%}
  {{ return(r.columns[0].values()) }}
{% endmacro %}
{% macro star(from, except=[]) -%}
  {%- if not execute %}{{ return('*') }}{% endif -%}
  {%- set cols = adapter.get_columns_in_relation(from) -%}
  {%- for c in cols if c.name not in except -%}{{ c.quoted }}{{ ", " if not loop.last }}{%- endfor -%}
{%- endmacro %}
{% macro row_count(table) %}
  {%- if not execute %}{{ return(0) }}{% endif -%}
  {%- call statement('counted', fetch_result=True) %}select count(*) as n from {{ table }}{% endcall -%}
  {{ return(load_result('counted')['data'][0][0]) }}
{% endmacro %}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("models/pivoted.sql"),
        r#"{% set statuses = fixture_utils.get_column_values(ref('raw_orders'), 'status') %}
select
  {% for s in statuses %}sum(case when status = '{{ s }}' then 1 else 0 end) as n_{{ s }},
  {% endfor %}{{ fixture_utils.row_count(ref('raw_orders')) }} as total,
  '{{ fixture_utils.star(ref('raw_orders'), except=['amount_cents']) | replace('"', '') }}' as cols,
  {{ graph.nodes.values() | selectattr('resource_type', 'equalto', 'model') | list | length }} as models,
  '{{ adapter.get_relation(database=target.database, schema=target.schema, identifier='nope') }}' as missing,
  '{{ adapter.get_relation(schema='main', identifier='raw_orders') }}' as found
from {{ ref('raw_orders') }}
"#,
    )
    .unwrap();
    ok(ferry(&dir, &["seed"]));
    let run = ok(ferry(&dir, &["run", "--select", "pivoted"]));
    assert!(run.contains("1 succeeded"), "{run}");
    assert_eq!(
        csv(&dir, "select * from pivoted"),
        "n_completed,n_returned,n_shipped,total,cols,models,missing,found\n2,1,1,4,\"id, user_id, order_date, status\",5,None,raw_orders\n"
    );
}

/// `config.get`, `target` from the project's profiles.yml output chosen
/// with --target, and `modules.datetime` / `modules.re`.
#[test]
fn config_get_target_and_modules_render_as_in_dbt() {
    let (_tmp, dir) = copy_fixture("dbt_packages");
    std::fs::write(
        dir.join("profiles.yml"),
        "shop:\n  target: dev\n  outputs:\n    dev: {type: duckdb, schema: main, threads: 2}\n    prod: {type: duckdb, schema: analytics, threads: 8}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/ctx.sql"),
        "{{ config(materialized='view') }}select '{{ config.get('materialized') }}' as m, \
         '{{ config.get('nope', 'fallback') }}' as d, \
         '{{ target.name }}/{{ target.schema }}/{{ target.threads }}/{{ target.type }}' as t, \
         {{ modules.datetime.datetime.utcnow().year }} >= 2026 as y, \
         '{{ modules.re.sub('(a)(b)', '\\\\2\\\\1', 'xaby') }}' as r, \
         '{{ modules.re.search('o([0-9]+)', 'foo42bar').group(1) }}' as g",
    )
    .unwrap();
    let sql = ok(ferry(&dir, &["compile", "--select", "ctx"]));
    assert!(
        sql.contains("select 'view' as m, 'fallback' as d, 'dev/main/2/datafusion' as t, "),
        "{sql}"
    );
    assert!(sql.contains("'xbay' as r, '42' as g"), "{sql}");
    let sql = ok(ferry(
        &dir,
        &["--target", "prod", "compile", "--select", "ctx"],
    ));
    assert!(sql.contains("'prod/analytics/8/datafusion' as t"), "{sql}");
    let e = text(&ferry(&dir, &["--target", "nope", "compile"]));
    assert!(
        e.contains("--target nope") && e.contains("has no output nope (it has dev, prod)"),
        "{e}"
    );
}

/// dbt's artifacts: target/manifest.json (nodes with checksums, parent and
/// child maps) and target/run_results.json; `--select state:modified+
/// --state DIR` runs what changed since the manifest in DIR, and its children.
#[test]
fn artifacts_and_state_modified_select_what_changed() {
    let (tmp, dir) = copy_fixture("dbt_packages");
    ok(ferry(&dir, &["seed"]));
    ok(ferry(&dir, &["run"]));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("target/manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["metadata"]["dbt_schema_version"],
        "https://schemas.getdbt.com/dbt/manifest/v12.json"
    );
    let orders = &manifest["nodes"]["model.shop.orders"];
    assert_eq!(orders["resource_type"], "model");
    assert_eq!(
        orders["depends_on"]["nodes"],
        serde_json::json!(["seed.shop.raw_orders"])
    );
    assert_eq!(orders["checksum"]["checksum"].as_str().unwrap().len(), 64);
    assert_eq!(
        manifest["parent_map"]["model.shop.orders"],
        serde_json::json!(["seed.shop.raw_orders"])
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("target/run_results.json")).unwrap())
            .unwrap();
    assert_eq!(results["args"]["which"], "run");
    let statuses: Vec<(&str, &str)> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["unique_id"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("model.shop.orders", "success")),
        "{statuses:?}"
    );
    // Save the state, change one model, run what changed.
    let state = tmp.path().join("state");
    copy_dir(&dir.join("target"), &state);
    let sql = std::fs::read_to_string(dir.join("models/orders.sql")).unwrap();
    std::fs::write(dir.join("models/orders.sql"), format!("-- changed\n{sql}")).unwrap();
    let run = ok(ferry(
        &dir,
        &[
            "run",
            "--select",
            "state:modified",
            "--state",
            state.to_str().unwrap(),
        ],
    ));
    assert!(
        run.contains("OK    orders") && run.contains("1 succeeded"),
        "{run}"
    );
    // Nothing changed against the new state: nothing runs.
    let fresh = tmp.path().join("fresh");
    copy_dir(&dir.join("target"), &fresh);
    let run = ok(ferry(
        &dir,
        &[
            "run",
            "--select",
            "state:modified",
            "--state",
            fresh.to_str().unwrap(),
        ],
    ));
    assert!(run.contains("0 succeeded"), "{run}");
    let tests = ok(ferry(&dir, &["test"]));
    assert!(tests.contains("passed"), "{tests}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("target/run_results.json")).unwrap())
            .unwrap();
    assert_eq!(results["args"]["which"], "test");
    assert!(
        results["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "warn" && r["failures"] == 1),
        "{results}"
    );
    let e = text(&ferry(&dir, &["run", "--select", "state:modified"]));
    assert!(e.contains("needs --state DIR"), "{e}");
}

/// The `seeds:` tree of dbt_project.yml, with Jinja as real projects write
/// it: `+enabled: "{{ var('load_source_data', false) }}"` loads the seeds
/// only with `--vars '{"load_source_data": true}'`; `+column_types` applies.
#[test]
fn seeds_tree_configs_render_jinja_with_vars() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    let yml = std::fs::read_to_string(dir.join("dbt_project.yml")).unwrap();
    std::fs::write(
        dir.join("dbt_project.yml"),
        format!(
            "{yml}\nseeds:\n  jaffle_shop:\n    +schema: raw\n    +enabled: \"{{{{ var('load_source_data', false) }}}}\"\n    +column_types:\n      id: varchar\n"
        ),
    )
    .unwrap();
    // Off by default: the models that ref the seeds say so, as dbt does.
    let e = text(&ferry(&dir, &["seed"]));
    assert!(
        e.contains("ref('raw_customers') names a node that is disabled"),
        "{e}"
    );
    let out = ok(ferry(
        &dir,
        &["seed", "--vars", "{\"load_source_data\": true}"],
    ));
    assert!(
        out.contains("seed raw_orders") && out.contains("seed raw_customers"),
        "{out}"
    );
    assert_eq!(
        csv(
            &dir,
            "select arrow_typeof(id) like 'Utf8%' as text from raw_orders limit 1"
        ),
        "text\ntrue\n"
    );
    // A value that is not a boolean after rendering is refused with where it is.
    std::fs::write(
        dir.join("dbt_project.yml"),
        format!("{yml}\nseeds:\n  jaffle_shop:\n    +enabled: \"{{{{ 'maybe' }}}}\"\n"),
    )
    .unwrap();
    let e = text(&ferry(&dir, &["seed"]));
    assert!(
        e.contains("seeds settings for jaffle_shop: +enabled"),
        "{e}"
    );
}

/// `ferry build` runs a model's data tests as soon as it is built, as
/// `dbt build` does: a failing error-severity test fails the model and its
/// children are skipped (a warn-severity one does not).
#[test]
fn build_tests_a_model_before_its_children() {
    let (_tmp, dir) = copy_fixture("dbt_packages");
    std::fs::write(
        dir.join("models/orders_child.sql"),
        "select id, amount from {{ ref('orders') }}",
    )
    .unwrap();
    // The warn-severity range test fails on 25.00 but does not block.
    let out = ok(ferry(&dir, &["build", "--skip-sync"]));
    assert!(out.contains("OK    orders_child"), "{out}");
    let schema = std::fs::read_to_string(dir.join("models/schema.yml")).unwrap();
    std::fs::write(
        dir.join("models/schema.yml"),
        schema.replace("severity: warn", "severity: error"),
    )
    .unwrap();
    std::fs::remove_dir_all(dir.join("lake/models/orders_child")).unwrap();
    let o = ferry(&dir, &["build", "--skip-sync"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("built, but its tests failed, so its children were not built: fixture_utils_accepted_range_orders_amount (1 failing row)")
            && out.contains("SKIP  orders_child"),
        "{out}"
    );
    assert!(!dir.join("lake/models/orders_child").exists());
    // `ferry run` alone builds without testing, as dbt run does.
    let out = ok(ferry(&dir, &["run"]));
    assert!(out.contains("OK    orders_child"), "{out}");
}

/// dbt's default naming: a custom schema is appended to the target's
/// (`main_raw`), an alias renames the relation; `ferry query` reads each
/// node where dbt would have created it, and the manifest says so.
#[test]
fn schema_and_alias_name_relations_as_dbt_does() {
    let (_tmp, dir) = copy_fixture("dbt_jaffle");
    let yml = std::fs::read_to_string(dir.join("dbt_project.yml")).unwrap();
    std::fs::write(
        dir.join("dbt_project.yml"),
        format!(
            "{}\nseeds:\n  jaffle_shop:\n    +schema: raw\n",
            yml.replace(
                "      +tags: ['marts']",
                "      +tags: ['marts']\n      +schema: analytics"
            )
        ),
    )
    .unwrap();
    let customers = std::fs::read_to_string(dir.join("models/marts/customers.sql")).unwrap();
    std::fs::write(
        dir.join("models/marts/customers.sql"),
        format!("{{{{ config(alias='dim_customers') }}}}\n{customers}"),
    )
    .unwrap();
    let stg = std::fs::read_to_string(dir.join("models/staging/stg_customers.sql")).unwrap();
    std::fs::write(
        dir.join("models/staging/stg_customers.sql"),
        format!("{{{{ config(docs={{'show': false}}) }}}}\n{stg}"),
    )
    .unwrap();
    ok(ferry(&dir, &["seed"]));
    ok(ferry(&dir, &["run"]));
    // The docs site names each model's relation and hides `show: false`.
    ok(ferry(&dir, &["docs"]));
    let site = std::fs::read_to_string(dir.join("target/docs/index.html")).unwrap();
    assert!(site.contains("main_analytics.dim_customers"), "{site}");
    assert!(
        site.contains("\"id\":\"model.stg_orders\"")
            && !site.contains("\"id\":\"model.stg_customers\""),
        "hidden models stay out of the docs"
    );
    let n = csv(&dir, "select count(*) as n from raw_orders");
    assert_eq!(
        csv(&dir, "select count(*) as n from main_raw.raw_orders"),
        n
    );
    assert_eq!(
        csv(
            &dir,
            "select count(*) as n from main_analytics.dim_customers"
        ),
        csv(&dir, "select count(*) as n from customers")
    );
    // A view (staging) without a custom schema is in the target's.
    assert_eq!(
        csv(&dir, "select count(*) as n from main.stg_orders"),
        csv(&dir, "select count(*) as n from stg_orders")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("target/manifest.json")).unwrap()).unwrap();
    let node = &manifest["nodes"]["model.jaffle_shop.customers"];
    assert_eq!(node["schema"], "main_analytics");
    assert_eq!(node["alias"], "dim_customers");
    assert_eq!(
        node["relation_name"],
        "\"lake\".\"main_analytics\".\"dim_customers\""
    );
    assert_eq!(
        manifest["nodes"]["seed.jaffle_shop.raw_orders"]["schema"],
        "main_raw"
    );

    // A source declared in `raw` does not read a seed created in
    // `main_raw` (dbt would not either): ferry says how to point it.
    std::fs::write(
        dir.join("models/sources.yml"),
        "version: 2\nsources:\n  - name: ecom\n    schema: raw\n    tables:\n      - name: raw_orders\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/order_count.sql"),
        "select count(*) as n from {{ source('ecom', 'raw_orders') }}\n",
    )
    .unwrap();
    let out = ferry(&dir, &["compile", "--select", "order_count"]);
    let said = text(&out);
    assert!(
        said.contains("reads the lake stream raw.raw_orders, not seed raw_orders")
            && said.contains("give the source schema: main_raw"),
        "{said}"
    );
    std::fs::write(
        dir.join("models/sources.yml"),
        "version: 2\nsources:\n  - name: ecom\n    schema: main_raw\n    tables:\n      - name: raw_orders\n",
    )
    .unwrap();
    ok(ferry(&dir, &["run", "--select", "order_count"]));
    assert_eq!(csv(&dir, "select n from order_count"), n);

    // The project's generate_alias_name decides names; two nodes in one
    // relation are refused, as dbt refuses them.
    std::fs::write(
        dir.join("macros/naming.sql"),
        "{% macro generate_alias_name(custom_alias_name=none, node=none) -%}\n\
         {%- if node.resource_type == 'seed' -%}{{ node.name | replace('raw_', 'src_') }}\n\
         {%- else -%}{{ custom_alias_name or node.name }}{%- endif -%}\n\
         {%- endmacro %}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("models/sources.yml"),
        "version: 2\nsources:\n  - name: ecom\n    schema: main_raw\n    tables:\n      - name: raw_orders\n        identifier: src_orders\n",
    )
    .unwrap();
    ok(ferry(&dir, &["run", "--select", "order_count"]));
    assert_eq!(
        csv(&dir, "select count(*) as n from main_raw.src_orders"),
        n
    );
    assert_eq!(csv(&dir, "select n from order_count"), n);
    std::fs::write(
        dir.join("models/orders_again.sql"),
        "{{ config(alias='order_count') }}\nselect 1 as n\n",
    )
    .unwrap();
    let clash = ferry(&dir, &["run"]);
    assert!(!clash.status.success());
    assert!(
        text(&clash).contains("order_count and orders_again would both be main.order_count"),
        "{}",
        text(&clash)
    );
}

/// `latest_by` ranks only the keys seen more than once (the window's sort
/// runs on the duplicates alone): whatever the key (one column, several,
/// an expression, null), it keeps the same rows as the plain window
/// `row_number() over (partition by key order by _ferry_loaded_at desc) = 1`,
/// the newest landing of each key.
#[test]
fn latest_by_keeps_the_newest_row_per_key_as_the_window_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("ferry.toml"), "[project]\nname = \"p\"\n").unwrap();
    // Keys are unique within a landing (rows tied on `_ferry_loaded_at` may
    // come out either way, in the window as here) and repeat across them.
    let row = |id: String, email: String, account: String, v: String| {
        format!(
            "{{\"id\": {id}, \"email\": \"{email}\", \"account\": {account}, \"v\": \"{v}\"}}\n"
        )
    };
    let first: String = (0..120)
        .map(|i| {
            let id = if i == 7 {
                "null".to_string()
            } else {
                i.to_string()
            };
            let account = if i % 3 == 0 {
                "null".to_string()
            } else {
                format!("\"acc{}\"", i % 4)
            };
            row(id, format!("P{i}@X.io"), account, format!("first {i}"))
        })
        .collect();
    let second: String = (0..120)
        .step_by(9)
        .map(|i| {
            let id = if i == 18 {
                "null".to_string()
            } else {
                i.to_string()
            };
            row(
                id,
                format!("p{i}@x.io"),
                format!("\"acc{}\"", i % 4),
                format!("second {i}"),
            )
        })
        .collect();
    std::fs::write(dir.join("first.jsonl"), first).unwrap();
    std::fs::write(dir.join("second.jsonl"), second).unwrap();
    for f in ["first.jsonl", "second.jsonl"] {
        ok(ferry(
            &dir,
            &["land", "crm.contacts", dir.join(f).to_str().unwrap()],
        ));
    }
    let keys = [
        ("by_id", "id"),
        ("by_pair", "email, account"),
        ("by_expr", "lower(email)"),
    ];
    for (name, key) in keys {
        std::fs::write(
            dir.join(format!("models/{name}.sql")),
            format!("select * from {{{{ latest_by(source('crm', 'contacts'), '{key}') }}}}\n"),
        )
        .unwrap();
    }
    ok(ferry(&dir, &["run"]));
    for (name, key) in keys {
        let window = format!(
            "(select * exclude (rn) from (select *, row_number() over (partition by {key} order by _ferry_loaded_at desc) as rn from crm.contacts) where rn = 1)"
        );
        assert_eq!(
            csv(
                &dir,
                &format!(
                    "select (select count(*) from {name}) as n, \
                     (select count(*) from (select * from {name} except all select * from {window})) as extra, \
                     (select count(*) from (select * from {window} except all select * from {name})) as missing"
                )
            ),
            format!(
                "n,extra,missing\n{},0,0\n",
                csv(&dir, &format!("select count(*) as n from {window}"))
                    .lines()
                    .nth(1)
                    .unwrap()
            ),
            "{name}: latest_by({key}) differs from the window"
        );
    }
    // The newest landing wins; null ids are one key.
    assert_eq!(
        csv(&dir, "select v from by_id where id = 9"),
        "v\nsecond 9\n"
    );
    assert_eq!(
        csv(&dir, "select count(*) as n from by_id where id is null"),
        "n\n1\n"
    );
}

/// Rows of each row group of each Parquet file of a model's table, by file.
fn row_groups(table: &Path) -> Vec<(PathBuf, Vec<i64>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(table).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
                .unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        let rows = meta.row_groups().iter().map(|g| g.num_rows()).collect();
        out.push((path, rows));
    }
    out
}

/// Regression: delta-rs wrote a model of a million rows as one row group,
/// so every model reading it scanned on one core. A model's files now hold
/// row groups of at most 128Ki rows, whether a table writes them or an
/// incremental model's merge.
#[test]
fn a_large_model_is_written_in_row_groups_a_scan_can_split() {
    let (_tmp, dir) = fixture();
    let select =
        "select value as n, cast(value % 97 as varchar) as s from generate_series(1, 300000)";
    std::fs::write(
        dir.join("models/marts/big.sql"),
        format!("{{{{ config(materialized='table') }}}}\n{select}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/marts/big_inc.sql"),
        format!("{{{{ config(materialized='incremental', unique_key='n') }}}}\n{select}\n"),
    )
    .unwrap();
    ok(ferry(&dir, &["run", "--select", "big", "big_inc"]));
    // The second run merges every row again: the merge rewrites the files.
    ok(ferry(&dir, &["run", "--select", "big_inc"]));
    for (table, files) in [("big", 1), ("big_inc", 2)] {
        let groups = row_groups(&dir.join("lake/models").join(table));
        assert!(groups.len() >= files, "{table}: {} files", groups.len());
        for (path, rows) in &groups {
            assert!(
                rows.iter().all(|&r| r <= 128 * 1024),
                "{}: {rows:?}",
                path.display()
            );
        }
        if table == "big" {
            let rows: Vec<i64> = groups.iter().flat_map(|g| g.1.clone()).collect();
            assert_eq!(rows.iter().sum::<i64>(), 300_000);
            assert!(rows.len() >= 3, "300,000 rows in {} row groups", rows.len());
        }
        assert_eq!(
            csv(
                &dir,
                &format!("select count(*) as n, sum(n) as total from {table}")
            ),
            "n,total\n300000,45000150000\n"
        );
    }
}
