//! Benchmark: one dbt project with a package, run unchanged by `ferry
//! build` and by `dbt build` on dbt-duckdb, over the same Parquet files.
//!
//! The project: 8 models (2 staging views, 6 tables, one incremental) over
//! `raw.orders` (FERRY_BENCH_ROWS, default 1M) and `raw.customers` (a tenth
//! of that); the fixture package fixture_utils in `dbt_packages/`
//! (dispatched macros, `dbt.*` macros, generic tests written as
//! `{% test %}` blocks); 9 data tests and one unit test. ferry reads the
//! sources as lake streams; dbt-duckdb reads the same files through the
//! sources' `meta.external_location`.
//!
//! Run: `cargo bench --profile dev -- dbt`. With dbt-duckdb installed
//! (`python3 -m venv /tmp/dbt && /tmp/dbt/bin/pip install "dbt-core>=1.9,<1.11"
//! "dbt-duckdb>=1.9,<1.10"`), set FERRY_BENCH_DBT=/tmp/dbt/bin/dbt to run
//! dbt too; the two tools' results are then compared. Wall time and peak
//! memory come from `/usr/bin/time`. FERRY_BENCH_KEEP=DIR keeps the project.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use ferry::lake::{Lake, Lander, RunId, StreamRef};
use ferry::project::StreamOptions;

const STATUSES: [&str; 4] = ["completed", "shipped", "returned", "placed"];
const COUNTRIES: [&str; 5] = ["US", "FR", "DE", "GB", "JP"];

pub(crate) fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn project(dir: &Path) {
    write(
        dir,
        "dbt_project.yml",
        "name: 'bench'\nversion: '1.0.0'\nconfig-version: 2\nprofile: 'bench'\n\
         models:\n  bench:\n    +materialized: table\n    staging:\n      +materialized: view\n",
    );
    write(
        dir,
        "profiles.yml",
        "bench:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n      path: target/bench.duckdb\n      threads: 4\n",
    );
    let lake = dir.join("lake").display().to_string();
    write(
        dir,
        "models/staging/sources.yml",
        &format!(
            "version: 2\nsources:\n  - name: raw\n    meta:\n      external_location: \"read_parquet('{lake}/raw/raw/{{name}}/**/*.parquet', hive_partitioning = false)\"\n    tables:\n      - name: orders\n      - name: customers\n"
        ),
    );
    write(
        dir,
        "models/staging/stg_orders.sql",
        "select\n    id as order_id,\n    user_id as customer_id,\n    cast(order_date as date) as order_date,\n    status,\n    amount_cents,\n    {{ fixture_utils.cents_to_dollars('amount_cents') }} as amount,\n    {{ fixture_utils.surrogate_key(['id', 'user_id']) }} as order_key\nfrom {{ source('raw', 'orders') }}\n",
    );
    write(
        dir,
        "models/staging/stg_customers.sql",
        "select id as customer_id, lower(email) as email, country, cast(signed_up_on as date) as signed_up_on\nfrom {{ source('raw', 'customers') }}\n",
    );
    write(
        dir,
        "models/orders.sql",
        "select\n    o.order_id, o.order_key, o.customer_id, o.order_date, o.status, o.amount_cents, o.amount,\n    c.country,\n    cast({{ dbt.date_trunc('month', 'o.order_date') }} as date) as order_month,\n    {{ dbt.datediff('c.signed_up_on', 'o.order_date', 'day') }} as days_since_signup\nfrom {{ ref('stg_orders') }} o\njoin {{ ref('stg_customers') }} c on c.customer_id = o.customer_id\n",
    );
    write(
        dir,
        "models/customer_orders.sql",
        "select\n    customer_id,\n    count(*) as orders,\n    sum(amount) as revenue,\n    min(order_date) as first_order,\n    max(order_date) as last_order,\n    count(distinct status) as statuses,\n    sum(case when status = 'returned' then 1 else 0 end) as returns\nfrom {{ ref('orders') }}\ngroup by customer_id\n",
    );
    write(
        dir,
        "models/monthly_revenue.sql",
        "select\n    order_month,\n    country,\n    count(*) as orders,\n    sum(amount) as revenue,\n    avg(amount_cents / 100) as avg_dollars,\n    sum(amount_cents) / count(*) as cents_per_order\nfrom {{ ref('orders') }}\ngroup by order_month, country\n",
    );
    write(
        dir,
        "models/customer_ltv.sql",
        "select\n    c.customer_id,\n    s.country,\n    c.revenue,\n    rank() over (partition by s.country order by c.revenue desc, c.customer_id) as rank_in_country,\n    c.revenue / sum(c.revenue) over (partition by s.country) as share_of_country\nfrom {{ ref('customer_orders') }} c\njoin {{ ref('stg_customers') }} s on s.customer_id = c.customer_id\n",
    );
    write(
        dir,
        "models/top_customers.sql",
        "select * from {{ ref('customer_ltv') }} where rank_in_country <= 10\n",
    );
    write(
        dir,
        "models/order_facts.sql",
        "{{ config(materialized='incremental', unique_key='order_id') }}\nselect order_id, customer_id, order_date, amount\nfrom {{ ref('orders') }}\n{% if is_incremental() %}\nwhere order_date > (select max(order_date) from {{ this }})\n{% endif %}\n",
    );
    write(
        dir,
        "models/schema.yml",
        "version: 2\nmodels:\n  - name: orders\n    data_tests:\n      - fixture_utils.expression_is_true:\n          arguments:\n            expression: \"amount >= 0\"\n    columns:\n      - name: order_key\n        data_tests: [unique, not_null]\n      - name: status\n        data_tests:\n          - accepted_values:\n              arguments:\n                values: ['completed', 'shipped', 'returned', 'placed']\n      - name: customer_id\n        data_tests:\n          - relationships:\n              arguments:\n                to: ref('stg_customers')\n                field: customer_id\n      - name: amount\n        data_tests:\n          - fixture_utils.accepted_range:\n              arguments:\n                min_value: 0\n                max_value: 500\n  - name: customer_orders\n    columns:\n      - name: customer_id\n        data_tests: [unique, not_null]\n  - name: monthly_revenue\n    data_tests:\n      - fixture_utils.unique_combination_of_columns:\n          arguments:\n            combination_of_columns: ['order_month', 'country']\n\nunit_tests:\n  - name: revenue_per_customer\n    model: customer_orders\n    given:\n      - input: ref('orders')\n        rows:\n          - {customer_id: 1, amount: 10.50, order_date: 2024-01-01, status: completed}\n          - {customer_id: 1, amount: 4.50, order_date: 2024-02-01, status: returned}\n          - {customer_id: 2, amount: 1.00, order_date: 2024-03-01, status: placed}\n    expect:\n      rows:\n        - {customer_id: 1, orders: 2, revenue: 15.00, returns: 1}\n        - {customer_id: 2, orders: 1, revenue: 1.00, returns: 0}\n",
    );
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dbt_packages/dbt_packages/fixture_utils"),
        &dir.join("dbt_packages/fixture_utils"),
    );
}

fn orders(start: usize, n: usize, customers: usize) -> RecordBatch {
    let ids: Vec<i64> = (start as i64..(start + n) as i64).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("order_date", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("amount_cents", DataType::Int64, false),
    ]));
    let day0 = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(Int64Array::from(
            ids.iter()
                .map(|i| (i * 7919) % customers as i64)
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| (day0 + chrono::Duration::days(i % 730)).to_string())
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| STATUSES[(i % 4) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            ids.iter().map(|i| (i * 37) % 50_000).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

fn customers(n: usize) -> RecordBatch {
    let ids: Vec<i64> = (0..n as i64).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("email", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("signed_up_on", DataType::Utf8, false),
    ]));
    let day0 = chrono::NaiveDate::from_ymd_opt(2022, 1, 1).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| format!("User{i}@Example.com"))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| COUNTRIES[(i % 5) as usize])
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            ids.iter()
                .map(|i| (day0 + chrono::Duration::days(i % 365)).to_string())
                .collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

/// Run `cmd` under /usr/bin/time: (wall seconds, peak RSS MiB, ok, output).
pub(crate) fn timed(dir: &Path, cmd: &[&str]) -> (f64, f64, bool, String) {
    let report = dir.join("target/time.txt");
    std::fs::create_dir_all(dir.join("target")).unwrap();
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&report)
        .args(cmd)
        .current_dir(dir)
        .env_remove("FERRY_LAKE")
        .output()
        .expect("/usr/bin/time");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let mut parts = text.split_whitespace();
    let secs: f64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let kib: f64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, kib / 1024.0, out.status.success(), log)
}

/// The figures both tools must agree on.
const CHECK: &str = "select \
    (select count(*) from orders) as orders, \
    (select cast(sum(amount) as double) from orders) as revenue, \
    (select count(*) from monthly_revenue) as months_x_countries, \
    (select round(sum(avg_dollars), 6) from monthly_revenue) as sum_avg_dollars, \
    (select round(sum(cents_per_order), 6) from monthly_revenue) as sum_cents_per_order, \
    (select sum(days_since_signup) from orders) as days_since_signup, \
    (select count(*) from top_customers) as top, \
    (select round(sum(share_of_country), 6) from customer_ltv) as shares, \
    (select count(*) from order_facts) as facts";

pub fn main() {
    let rows: usize = std::env::var("FERRY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keep = std::env::var_os("FERRY_BENCH_KEEP").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.clone().unwrap_or_else(|| tmp.path().join("bench"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    project(&dir);
    let n_customers = (rows / 10).max(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake = Lake::from_url("lake", &dir, &BTreeMap::new()).unwrap();
        let lander = Lander::new(lake.clone(), RunId::new());
        let chunk = 200_000;
        lander
            .land_batches(
                &StreamRef::parse("raw.orders").unwrap(),
                StreamOptions::default(),
                (0..rows)
                    .step_by(chunk)
                    .map(|s| orders(s, chunk.min(rows - s), n_customers)),
            )
            .await
            .unwrap();
        lander
            .land_batches(
                &StreamRef::parse("raw.customers").unwrap(),
                StreamOptions::default(),
                [customers(n_customers)],
            )
            .await
            .unwrap();
    });
    println!(
        "dbt project: 8 models, 9 data tests, 1 unit test, package fixture_utils; {rows} orders, {n_customers} customers"
    );
    let ferry_bin = env!("CARGO_BIN_EXE_ferry");
    let (secs, mib, ok, log) = timed(&dir, &[ferry_bin, "build", "--skip-sync"]);
    assert!(ok, "ferry build failed:\n{log}");
    println!("ferry build --skip-sync      {secs:>7.2} s  peak {mib:>7.1} MiB");
    let (qsecs, _, ok, ferry_check) = timed(&dir, &[ferry_bin, "query", CHECK, "--format", "csv"]);
    assert!(ok, "{ferry_check}");
    let (isecs, imib, ok, log) = timed(&dir, &[ferry_bin, "run", "--select", "order_facts"]);
    assert!(ok, "{log}");
    println!(
        "ferry run (incremental, no new rows) {isecs:>5.2} s  peak {imib:>7.1} MiB   (check query {qsecs:.2} s)"
    );
    println!("ferry's figures:\n{}", ferry_check.trim());

    let Some(dbt) = std::env::var_os("FERRY_BENCH_DBT") else {
        println!("(set FERRY_BENCH_DBT to a dbt with dbt-duckdb to compare with dbt build)");
        return;
    };
    let dbt = dbt.to_string_lossy().to_string();
    let (secs, mib, ok, log) = timed(
        &dir,
        &[&dbt, "build", "--profiles-dir", ".", "--project-dir", "."],
    );
    assert!(ok, "dbt build failed:\n{log}");
    println!("dbt build (dbt-duckdb)       {secs:>7.2} s  peak {mib:>7.1} MiB");
    let dbt_check = duckdb_csv(&dir, &dbt, "target/bench.duckdb", CHECK);
    println!("dbt-duckdb's figures:\n{}", dbt_check.trim());
    println!("results: {}", compare(&ferry_check, &dbt_check));
}

/// `sql`'s result as CSV, from the DuckDB file dbt-duckdb wrote (with the
/// python of the venv `dbt` is in).
pub(crate) fn duckdb_csv(dir: &Path, dbt: &str, db: &str, sql: &str) -> String {
    let python = Path::new(dbt).with_file_name("python");
    let (_, _, ok, out) = timed(
        dir,
        &[
            python.to_str().unwrap(),
            "-c",
            &format!(
                "import duckdb, csv, sys\ncon = duckdb.connect('{db}', read_only=True)\nr = con.execute(\"{sql}\")\nw = csv.writer(sys.stdout, lineterminator='\\n')\nw.writerow([d[0] for d in r.description])\nw.writerows(r.fetchall())\n"
            ),
        ],
    );
    assert!(ok, "{out}");
    out
}

/// Whether two one-row CSV results hold the same figures (to 1e-6).
pub(crate) fn compare(a: &str, b: &str) -> &'static str {
    let parse = |t: &str| -> Vec<f64> {
        t.trim()
            .lines()
            .nth(1)
            .unwrap_or("")
            .split(',')
            .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
            .collect()
    };
    let (a, b) = (parse(a), parse(b));
    let same = a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(1.0));
    if same {
        "the same figures"
    } else {
        "DIFFERENT figures"
    }
}
